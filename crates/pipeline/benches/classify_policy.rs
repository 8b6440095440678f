//! Classification and policy decision per statement, cold (caches disabled) and cached.
//!
//! Goals: under 20 µs cold and under 2 µs cached for classify + decide.
//! The connection is tagged `production` and the policy is the default pack.

use std::hint::black_box;
use std::time::Duration;

use airlock_pipeline::classify::{ClassifyLimits, SqlClassifier, SqlDialect};
use airlock_pipeline::model::{ConnectionInfo, Identity, IdentityKind, Protocol};
use airlock_pipeline::policy::{PolicyContext, PolicySet};
use criterion::{Criterion, criterion_group, criterion_main};

const STATEMENTS: [(&str, &str); 5] = [
    (
        "pgbench_select",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
    ),
    (
        "insert",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 48213, -2840, CURRENT_TIMESTAMP);",
    ),
    (
        "update_where",
        "UPDATE pgbench_accounts SET abalance = abalance + -2840 WHERE aid = 48213;",
    ),
    (
        "join",
        "SELECT o.id, c.email, sum(i.price) FROM orders o \
         JOIN customers c ON c.id = o.customer_id \
         JOIN order_items i ON i.order_id = o.id \
         WHERE o.created_at > now() - interval '7 days' \
         GROUP BY o.id, c.email ORDER BY 3 DESC LIMIT 20",
    ),
    ("delete_no_where", "DELETE FROM sessions"),
];

fn identity(name: &str, kind: IdentityKind) -> Identity {
    Identity {
        name: name.into(),
        kind,
        groups: vec!["engineering".into()],
    }
}

fn benches(c: &mut Criterion) {
    let human = identity("alice", IdentityKind::Human);
    let agent = identity("langgraph-bot", IdentityKind::Agent);
    let conn = ConnectionInfo {
        name: "prod-pg".into(),
        protocol: Protocol::Postgres,
        tags: vec!["production".into(), "pii".into()],
    };
    let ctx = PolicyContext::default();
    let no_cache = ClassifyLimits {
        cache_entries: 0,
        ..ClassifyLimits::default()
    };
    let cold_classifier = SqlClassifier::new(SqlDialect::Postgres, no_cache);
    let warm_classifier = SqlClassifier::new(SqlDialect::Postgres, ClassifyLimits::default());
    let cold_policy = PolicySet::default_pack().with_verdict_cache(0);
    let warm_policy = PolicySet::default_pack();

    let mut group = c.benchmark_group("classify");
    for (name, sql) in STATEMENTS {
        group.bench_function(format!("cold/{name}"), |b| {
            b.iter(|| cold_classifier.classify(black_box(sql)))
        });
        group.bench_function(format!("cached/{name}"), |b| {
            b.iter(|| warm_classifier.classify(black_box(sql)))
        });
    }
    group.finish();

    // A human on production: reads and bounded writes are allowed outright
    // (one Cedar evaluation); DELETE without WHERE goes to review (two).
    // An agent on production: every write goes to review.
    let mut group = c.benchmark_group("decide");
    for (who, identity) in [("human", &human), ("agent", &agent)] {
        for (name, sql) in STATEMENTS {
            let cls = warm_classifier.classify(sql);
            group.bench_function(format!("cold/{who}/{name}"), |b| {
                b.iter(|| cold_policy.decide_sql(identity, &conn, black_box(&cls), &ctx))
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("classify_and_decide");
    for (name, sql) in STATEMENTS {
        group.bench_function(format!("cold/human/{name}"), |b| {
            b.iter(|| {
                let cls = cold_classifier.classify(black_box(sql));
                cold_policy.decide_sql(&human, &conn, &cls, &ctx)
            })
        });
        group.bench_function(format!("cached/human/{name}"), |b| {
            b.iter(|| {
                let cls = warm_classifier.classify(black_box(sql));
                warm_policy.decide_sql(&human, &conn, &cls, &ctx)
            })
        });
    }
    // pgbench -M simple: every statement has new literals, so classification
    // is always cold, but the verdict (keyed on facts, not text, under the
    // default pack) is shared.
    let mut aid = 0u64;
    group.bench_function("new_literals/human/pgbench_select", |b| {
        b.iter(|| {
            aid += 1;
            let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
            let cls = warm_classifier.classify(black_box(&sql));
            warm_policy.decide_sql(&human, &conn, &cls, &ctx)
        })
    });
    group.finish();
}

criterion_group! {
    name = group;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(group);
