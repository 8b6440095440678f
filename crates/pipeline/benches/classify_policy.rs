//! Classification and policy decision per statement, cold (caches disabled) and cached.
//!
//! Goals: under 20 µs cold and under 2 µs cached for classify + decide.
//! The identity is an agent on a `production` connection under the default
//! pack, so writes take the slow path (review: three Cedar evaluations).

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

fn subject() -> (Identity, ConnectionInfo) {
    (
        Identity {
            name: "langgraph-bot".into(),
            kind: IdentityKind::Agent,
            groups: vec!["agents".into()],
        },
        ConnectionInfo {
            name: "prod-pg".into(),
            protocol: Protocol::Postgres,
            tags: vec!["production".into(), "pii".into()],
        },
    )
}

fn benches(c: &mut Criterion) {
    let (identity, conn) = subject();
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
    }
    group.finish();

    let mut group = c.benchmark_group("decide");
    for (name, sql) in STATEMENTS {
        let cls = warm_classifier.classify(sql);
        group.bench_function(format!("cold/{name}"), |b| {
            b.iter(|| cold_policy.decide_sql(&identity, &conn, black_box(&cls), &ctx))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("classify_and_decide");
    for (name, sql) in STATEMENTS {
        group.bench_function(format!("cold/{name}"), |b| {
            b.iter(|| {
                let cls = cold_classifier.classify(black_box(sql));
                cold_policy.decide_sql(&identity, &conn, &cls, &ctx)
            })
        });
        group.bench_function(format!("cached/{name}"), |b| {
            b.iter(|| {
                let cls = warm_classifier.classify(black_box(sql));
                warm_policy.decide_sql(&identity, &conn, &cls, &ctx)
            })
        });
    }
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
