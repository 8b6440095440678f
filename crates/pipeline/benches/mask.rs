//! Throughput of masking one result row cell by cell: a plan with no rule
//! for the connection's columns (the common case), column rules, and
//! detector scanning of every text column.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use airlock_pipeline::mask::{
    CellOutcome, ColumnMeta, ConnectionMasker, MaskRuleConfig, MaskStrategy, Masker, MaskingConfig,
    RowPlan,
};
use airlock_pipeline::model::{ConnectionInfo, Protocol};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const ROW: [&[u8]; 4] = [
    b"12345",
    b"john.doe@example.com",
    b"4111 1111 1111 1111",
    b"Alice Smith",
];

fn columns() -> Vec<ColumnMeta> {
    [("id", 23), ("email", 25), ("card", 25), ("name", 25)]
        .iter()
        .map(|(name, oid)| ColumnMeta {
            name: name.to_string(),
            table: None,
            type_oid: *oid,
            binary: false,
        })
        .collect()
}

fn masker(columns: &[&str], detectors: &[&str]) -> Arc<ConnectionMasker> {
    let m = Masker::new(&MaskingConfig {
        rules: vec![MaskRuleConfig {
            columns: columns.iter().map(|s| s.to_string()).collect(),
            detectors: detectors.iter().map(|s| s.to_string()).collect(),
            strategy: MaskStrategy::Partial,
            ..MaskRuleConfig::default()
        }],
        custom_detectors: BTreeMap::new(),
        hash_key: None,
    })
    .expect("valid config");
    m.for_connection(&ConnectionInfo {
        name: "shop".into(),
        protocol: Protocol::Postgres,
        tags: vec![],
    })
    .expect("rule applies")
}

fn mask_row(plan: &RowPlan, row: &[&[u8]], out: &mut Vec<u8>) -> usize {
    let mut changed = 0;
    for (i, cell) in row.iter().enumerate() {
        if plan.mask_cell(i, black_box(cell), out) != CellOutcome::Unchanged {
            changed += 1;
        }
    }
    changed
}

fn bench(c: &mut Criterion) {
    let all = [
        "email",
        "credit_card",
        "us_ssn",
        "phone",
        "iban",
        "ip_address",
        "aws_access_key",
        "jwt",
        "private_key",
    ];
    let cases = [
        ("no_masking", masker(&["nothing_matches"], &[])),
        ("column_rules", masker(&["email", "*card*"], &[])),
        ("all_detectors", masker(&[], &all)),
    ];
    let mut group = c.benchmark_group("mask_row");
    group.throughput(Throughput::Elements(1));
    let cols = columns();
    for (name, m) in &cases {
        let plan = m.plan(&cols);
        let mut out = Vec::with_capacity(64);
        group.bench_function(*name, |b| b.iter(|| mask_row(&plan, &ROW, &mut out)));
    }
    let clean: [&[u8]; 4] = [
        b"12345",
        b"no mail here",
        b"order 2024-01-15",
        b"Alice Smith",
    ];
    let plan = cases[2].1.plan(&cols);
    let mut out = Vec::with_capacity(64);
    group.bench_function("all_detectors_clean_row", |b| {
        b.iter(|| mask_row(&plan, &clean, &mut out))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
