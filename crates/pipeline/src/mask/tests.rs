//! Tests of the masking engine as a whole: config validation, rule selection
//! per connection, plans and cell masking.

use std::collections::BTreeMap;

use super::*;
use crate::model::Protocol;

fn conn(name: &str, tags: &[&str]) -> ConnectionInfo {
    ConnectionInfo {
        name: name.into(),
        protocol: Protocol::Postgres,
        tags: tags.iter().map(|t| t.to_string()).collect(),
    }
}

fn col(name: &str, type_oid: u32) -> ColumnMeta {
    ColumnMeta {
        name: name.into(),
        table: None,
        type_oid,
        binary: false,
    }
}

fn rule(columns: &[&str], detectors: &[&str], strategy: MaskStrategy) -> MaskRuleConfig {
    MaskRuleConfig {
        columns: columns.iter().map(|s| s.to_string()).collect(),
        detectors: detectors.iter().map(|s| s.to_string()).collect(),
        strategy,
        ..MaskRuleConfig::default()
    }
}

fn masker(rules: Vec<MaskRuleConfig>) -> Masker {
    Masker::new(&MaskingConfig {
        rules,
        custom_detectors: BTreeMap::new(),
        hash_key: Some(b"test-key".to_vec()),
    })
    .unwrap()
}

fn for_any(m: &Masker) -> Arc<ConnectionMasker> {
    m.for_connection(&conn("shop", &["pii"])).unwrap()
}

/// Masks one cell and returns the outcome and the resulting text.
fn cell(plan: &RowPlan, col: usize, value: &str) -> (CellOutcome, String) {
    let mut out = Vec::new();
    let o = plan.mask_cell(col, value.as_bytes(), &mut out);
    let text = match o {
        CellOutcome::Unchanged => value.to_string(),
        CellOutcome::Replaced => String::from_utf8(out).unwrap(),
        CellOutcome::Null => "<NULL>".to_string(),
    };
    (o, text)
}

const EXAMPLE_TOML: &str = r#"
[[masking]]
name = "pii"
connections = ["shop"]
columns = ["email", "*card*", "ssn", "phone", "customers.email"]
detectors = ["email", "credit_card", "us_ssn", "phone", "iban", "ip_address", "aws_access_key", "jwt", "private_key", "order_ref"]
strategy = "partial"
keep_last = 4

[[masking]]
tags = ["secret"]
detectors = ["aws_access_key"]
strategy = "hash"

[masking_detectors]
order_ref = 'ORD-[0-9]{8}'
"#;

#[derive(serde::Deserialize)]
struct TopLevel {
    masking: Vec<MaskRuleConfig>,
    masking_detectors: BTreeMap<String, String>,
}

#[test]
fn the_documented_toml_deserializes_and_validates() {
    let top: TopLevel = toml::from_str(EXAMPLE_TOML).unwrap();
    assert_eq!(top.masking.len(), 2);
    assert_eq!(top.masking[0].strategy, MaskStrategy::Partial);
    assert_eq!(top.masking[0].keep_last, Some(4));
    assert_eq!(top.masking[1].name, None);
    let m = Masker::new(&MaskingConfig {
        rules: top.masking,
        custom_detectors: top.masking_detectors,
        hash_key: Some(b"k".to_vec()),
    })
    .unwrap();
    assert_eq!(m.rule_names(), ["pii", "rule2"]);
    let cm = m.for_connection(&conn("shop", &[])).unwrap();
    assert_eq!(
        cm.mask_text("ref ORD-12345678, mail john@example.com")
            .as_deref(),
        Some("ref ****, mail j****@*****.com")
    );
}

#[test]
fn unknown_fields_are_rejected() {
    let err = toml::from_str::<TopLevel>(
        "[[masking]]\ncolumns = [\"x\"]\nstratgy = \"hash\"\n[masking_detectors]\n",
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("stratgy"), "{err}");
    let err = toml::from_str::<TopLevel>(
        "[[masking]]\ncolumns = [\"x\"]\nstrategy = \"shred\"\n[masking_detectors]\n",
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("shred"), "{err}");
}

fn config_error(rules: Vec<MaskRuleConfig>, custom: &[(&str, &str)], key: Option<&[u8]>) -> String {
    Masker::new(&MaskingConfig {
        rules,
        custom_detectors: custom
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        hash_key: key.map(<[u8]>::to_vec),
    })
    .err()
    .unwrap()
    .to_string()
}

#[test]
fn config_errors_name_the_rule_and_field() {
    let e = config_error(vec![rule(&[], &["emial"], MaskStrategy::Redact)], &[], None);
    assert!(
        e.contains("rule1") && e.contains("detectors") && e.contains("emial"),
        "{e}"
    );

    let e = config_error(vec![rule(&["[ab]"], &[], MaskStrategy::Redact)], &[], None);
    assert!(
        e.contains("rule1") && e.contains("columns") && e.contains("[ab]"),
        "{e}"
    );

    let mut named = rule(&["x"], &[], MaskStrategy::Hash);
    named.name = Some("hashed".into());
    let e = config_error(vec![named], &[], None);
    assert!(e.contains("hashed") && e.contains("hash key"), "{e}");

    let e = config_error(
        vec![rule(&["x"], &[], MaskStrategy::Redact)],
        &[],
        Some(b""),
    );
    assert!(e.contains("hash key is empty"), "{e}");

    let e = config_error(vec![rule(&[], &[], MaskStrategy::Redact)], &[], None);
    assert!(e.contains("rule1") && e.contains("mask nothing"), "{e}");

    let mut k = rule(&["x"], &[], MaskStrategy::Redact);
    k.keep_last = Some(2);
    let e = config_error(vec![k], &[], None);
    assert!(e.contains("keep_last") && e.contains("redact"), "{e}");

    let mut k = rule(&["x"], &[], MaskStrategy::Partial);
    k.keep_last = Some(12);
    let e = config_error(vec![k], &[], None);
    assert!(e.contains("keep_last") && e.contains("12"), "{e}");

    let e = config_error(
        vec![rule(&[], &["bad"], MaskStrategy::Redact)],
        &[("bad", "a(")],
        None,
    );
    assert!(
        e.contains("masking detector `bad`") && e.contains("invalid regex"),
        "{e}"
    );

    let mut a = rule(&["x"], &[], MaskStrategy::Redact);
    a.name = Some("same".into());
    let b = a.clone();
    let e = config_error(vec![a, b], &[], None);
    assert!(
        e.contains("#1") && e.contains("#2") && e.contains("same"),
        "{e}"
    );

    let mut blank = rule(&["x"], &[], MaskStrategy::Redact);
    blank.connections = vec![" ".into()];
    let e = config_error(vec![blank], &[], None);
    assert!(e.contains("connections"), "{e}");
}

#[test]
fn rules_apply_by_connection_name_or_shared_tag() {
    let mut by_name = rule(&["email"], &[], MaskStrategy::Redact);
    by_name.connections = vec!["shop".into()];
    let mut by_tag = rule(&["ssn"], &[], MaskStrategy::Redact);
    by_tag.tags = vec!["pii".into()];
    let m = masker(vec![by_name, by_tag]);

    let cols = [col("email", 25), col("ssn", 25)];
    let actions = |c: &ConnectionInfo| {
        m.for_connection(c).map(|cm| {
            let p = cm.plan(&cols);
            (p.action(0).unwrap(), p.action(1).unwrap())
        })
    };
    let mask = |rule| ColumnAction::Mask {
        rule,
        strategy: MaskStrategy::Redact,
    };
    assert_eq!(
        actions(&conn("shop", &[])),
        Some((mask(0), ColumnAction::Pass))
    );
    assert_eq!(
        actions(&conn("crm", &["pii"])),
        Some((ColumnAction::Pass, mask(1)))
    );
    assert_eq!(actions(&conn("shop", &["pii"])), Some((mask(0), mask(1))));
    assert_eq!(actions(&conn("logs", &["ops"])), None);
}

#[test]
fn rules_without_targets_apply_everywhere_and_star_matches_all() {
    let everywhere = rule(&["email"], &[], MaskStrategy::Redact);
    let m = masker(vec![everywhere]);
    assert!(m.for_connection(&conn("anything", &[])).is_some());

    let mut star = rule(&["email"], &[], MaskStrategy::Redact);
    star.connections = vec!["*".into()];
    let m = masker(vec![star]);
    assert!(m.for_connection(&conn("other", &[])).is_some());
}

#[test]
fn connection_maskers_are_cached_per_name_and_tags() {
    let mut r = rule(&["email"], &[], MaskStrategy::Redact);
    r.tags = vec!["pii".into()];
    let m = masker(vec![r]);
    let a = m.for_connection(&conn("shop", &["pii"])).unwrap();
    let b = m.for_connection(&conn("shop", &["pii"])).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    // Same name, different tags (a reloaded connection): recomputed.
    assert!(m.for_connection(&conn("shop", &[])).is_none());
    assert!(m.for_connection(&conn("shop", &["pii"])).is_some());
    assert!(
        Masker::new(&MaskingConfig::default())
            .unwrap()
            .for_connection(&conn("x", &[]))
            .is_none()
    );
}

#[test]
fn plan_decides_per_column_by_rule_type_and_format() {
    let m = masker(vec![
        rule(
            &["email", "*card*", "customers.ssn"],
            &[],
            MaskStrategy::Redact,
        ),
        rule(&["secret"], &[], MaskStrategy::Null),
        rule(&[], &["email"], MaskStrategy::Redact),
    ]);
    let cm = for_any(&m);
    let mut customers_ssn = col("SSN", 25);
    customers_ssn.table = Some("public.customers".into());
    let mut orders_ssn = col("ssn", 25);
    orders_ssn.table = Some("orders".into());
    let mut bin_text = col("card_no", 25);
    bin_text.binary = true;
    let mut bin_int = col("card_id", 23);
    bin_int.binary = true;
    let cols = [
        col("email", 1043),     // 0: column rule, varchar
        col("credit_card", 20), // 1: column rule on int8 text: NULL
        customers_ssn,          // 2: table-qualified match
        orders_ssn,             // 3: other table: detectors
        col("secret", 25),      // 4: null strategy
        col("notes", 25),       // 5: detectors
        col("id", 23),          // 6: int4: nothing to scan
        bin_text,               // 7: binary text: masked as text
        bin_int,                // 8: binary int named by rule: NULL
        col("tags", 1009),      // 9: text[]: scanned
        col("card_tags", 1009), // 10: text[] named by rule: NULL
    ];
    let plan = cm.plan(&cols);
    let mask = ColumnAction::Mask {
        rule: 0,
        strategy: MaskStrategy::Redact,
    };
    let got: Vec<ColumnAction> = (0..cols.len()).map(|i| plan.action(i).unwrap()).collect();
    assert_eq!(
        got,
        vec![
            mask,
            ColumnAction::Null { rule: 0 },
            mask,
            ColumnAction::Scan,
            ColumnAction::Null { rule: 1 },
            ColumnAction::Scan,
            ColumnAction::Pass,
            mask,
            ColumnAction::Null { rule: 0 },
            ColumnAction::Scan,
            ColumnAction::Null { rule: 0 },
        ]
    );
    assert!(!plan.is_noop());
    assert_eq!(plan.len(), cols.len());
    assert_eq!(plan.action(cols.len()), None);

    let only_ids = cm.plan(&[col("id", 23), col("created_at", 1184)]);
    assert!(only_ids.is_noop());
}

#[test]
fn column_rules_only_means_other_columns_pass() {
    let m = masker(vec![rule(&["email"], &[], MaskStrategy::Redact)]);
    let plan = for_any(&m).plan(&[col("email", 25), col("notes", 25)]);
    assert_eq!(plan.action(1), Some(ColumnAction::Pass));
    assert_eq!(cell(&plan, 1, "mail a@b.com").0, CellOutcome::Unchanged);
}

#[test]
fn strategies_on_whole_cells() {
    let mut partial = rule(
        &["email", "card", "ssn", "phone", "iban", "name"],
        &[],
        MaskStrategy::Partial,
    );
    partial.connections = vec!["p".into()];
    let mut redact = rule(&["email"], &[], MaskStrategy::Redact);
    redact.connections = vec!["r".into()];
    let mut hash = rule(&["email"], &[], MaskStrategy::Hash);
    hash.connections = vec!["h".into()];
    let mut null = rule(&["email"], &[], MaskStrategy::Null);
    null.connections = vec!["n".into()];
    let m = masker(vec![partial, redact, hash, null]);

    let p = m.for_connection(&conn("p", &[])).unwrap().plan(&[
        col("email", 25),
        col("card", 25),
        col("ssn", 25),
        col("phone", 25),
        col("iban", 25),
        col("name", 25),
    ]);
    assert_eq!(cell(&p, 0, "john.doe@example.com").1, "j****@*****.com");
    assert_eq!(cell(&p, 1, "4111 1111 1111 9012").1, "****-****-****-9012");
    assert_eq!(cell(&p, 1, "4111-1111-1111-9012").1, "****-****-****-9012");
    assert_eq!(cell(&p, 1, "4111111111119012").1, "****-****-****-9012");
    assert_eq!(cell(&p, 2, "123-45-6789").1, "***-**-6789");
    assert_eq!(cell(&p, 3, "(415) 555-2671").1, "(***) ***-2671");
    assert_eq!(
        cell(&p, 4, "DE89370400440532013000").1,
        "DE****************3000"
    );
    assert_eq!(cell(&p, 5, "Alice Smith").1, "****");

    let r = m
        .for_connection(&conn("r", &[]))
        .unwrap()
        .plan(&[col("email", 25)]);
    assert_eq!(
        cell(&r, 0, "john@example.com"),
        (CellOutcome::Replaced, "****".into())
    );

    let h = m
        .for_connection(&conn("h", &[]))
        .unwrap()
        .plan(&[col("email", 25)]);
    let (o, a) = cell(&h, 0, "john@example.com");
    assert_eq!(o, CellOutcome::Replaced);
    assert!(a.starts_with("hash:") && a.len() == 21, "{a}");
    assert_eq!(cell(&h, 0, "john@example.com").1, a, "stable");
    assert_ne!(cell(&h, 0, "jane@example.com").1, a);

    let n = m
        .for_connection(&conn("n", &[]))
        .unwrap()
        .plan(&[col("email", 25)]);
    assert_eq!(cell(&n, 0, "john@example.com").0, CellOutcome::Null);
}

#[test]
fn hash_depends_on_the_key() {
    let cfg = |key: &[u8]| MaskingConfig {
        rules: vec![rule(&["email"], &[], MaskStrategy::Hash)],
        custom_detectors: BTreeMap::new(),
        hash_key: Some(key.to_vec()),
    };
    let run = |key: &[u8]| {
        let m = Masker::new(&cfg(key)).unwrap();
        let plan = for_any(&m).plan(&[col("email", 25)]);
        cell(&plan, 0, "john@example.com").1
    };
    assert_eq!(run(b"one"), run(b"one"));
    assert_ne!(run(b"one"), run(b"two"));
}

#[test]
fn detector_scan_masks_inside_text_per_strategy() {
    let m = masker(vec![rule(
        &[],
        &["email", "credit_card", "us_ssn"],
        MaskStrategy::Partial,
    )]);
    let plan = for_any(&m).plan(&[col("notes", 25)]);
    assert_eq!(
        cell(
            &plan,
            0,
            "contact john@example.com, card 4111-1111-1111-1111, ssn 123-45-6789."
        )
        .1,
        "contact j****@*****.com, card ****-****-****-1111, ssn ***-**-6789."
    );
    assert_eq!(
        cell(&plan, 0, "nothing here 12345").0,
        CellOutcome::Unchanged
    );
    assert_eq!(cell(&plan, 0, "").0, CellOutcome::Unchanged);

    // `null` cannot NULL part of a text: the hit becomes `****`.
    let m = masker(vec![rule(&[], &["email"], MaskStrategy::Null)]);
    let plan = for_any(&m).plan(&[col("notes", 25)]);
    assert_eq!(
        cell(&plan, 0, "mail john@example.com now").1,
        "mail **** now"
    );
}

#[test]
fn first_rule_wins_for_a_detector() {
    let m = masker(vec![
        rule(&[], &["email"], MaskStrategy::Redact),
        rule(&[], &["email", "us_ssn"], MaskStrategy::Partial),
    ]);
    let cm = for_any(&m);
    assert_eq!(
        cm.mask_text("a@b.com 123-45-6789").as_deref(),
        Some("**** ***-**-6789")
    );
}

#[test]
fn json_columns_stay_json() {
    let m = masker(vec![
        rule(&["doc_email"], &[], MaskStrategy::Partial),
        rule(&["doc_obj"], &[], MaskStrategy::Redact),
        rule(&[], &["email", "credit_card"], MaskStrategy::Redact),
    ]);
    let cm = for_any(&m);
    let plan = cm.plan(&[
        col("doc_email", 114),
        col("doc_obj", 3802),
        col("doc", 3802),
    ]);
    assert_eq!(
        cell(&plan, 0, r#""john@example.com""#).1,
        r#""j****@*****.com""#
    );
    assert_eq!(cell(&plan, 1, r#"{"a": 1}"#).1, r#""****""#);
    assert_eq!(
        cell(
            &plan,
            2,
            r#"{"email": "john@example.com", "card": 4111111111111111}"#
        )
        .1,
        r#"{"email": "****", "card": "****"}"#
    );
    // An escaped quote before the hit does not confuse the string tracking.
    assert_eq!(
        cell(&plan, 2, r#"{"n": "say \"hi\" to john@example.com"}"#).1,
        r#"{"n": "say \"hi\" to ****"}"#
    );
    // Every output above parses as JSON.
    for v in [
        r#""j****@*****.com""#,
        r#"{"email": "****", "card": "****"}"#,
    ] {
        serde_json::from_str::<serde_json::Value>(v).unwrap();
    }
}

#[test]
fn binary_jsonb_keeps_its_version_byte() {
    let m = masker(vec![
        rule(&["doc_email"], &[], MaskStrategy::Redact),
        rule(&[], &["email"], MaskStrategy::Redact),
    ]);
    let cm = for_any(&m);
    let mut whole = col("doc_email", 3802);
    whole.binary = true;
    let mut scanned = col("doc", 3802);
    scanned.binary = true;
    let plan = cm.plan(&[whole, scanned]);
    let mut out = Vec::new();

    assert_eq!(
        plan.mask_cell(0, b"\x01\"a@b.com\"", &mut out),
        CellOutcome::Replaced
    );
    assert_eq!(out, b"\x01\"****\"");
    assert_eq!(
        plan.mask_cell(1, b"\x01{\"e\": \"a@b.com\"}", &mut out),
        CellOutcome::Replaced
    );
    assert_eq!(out, b"\x01{\"e\": \"****\"}");
    assert_eq!(
        plan.mask_cell(1, b"\x01{\"e\": 1}", &mut out),
        CellOutcome::Unchanged
    );
    assert!(out.is_empty());
    // Unknown version: cannot be read, so it is not forwarded.
    assert_eq!(plan.mask_cell(1, b"\x02{}", &mut out), CellOutcome::Null);
    assert_eq!(plan.mask_cell(0, b"", &mut out), CellOutcome::Null);
}

#[test]
fn invalid_utf8_cells_are_handled() {
    let m = masker(vec![rule(&[], &["email"], MaskStrategy::Redact)]);
    let plan = for_any(&m).plan(&[col("notes", 25)]);
    let mut out = Vec::new();
    assert_eq!(
        plan.mask_cell(0, b"\xff\xfe a@b.com \xff", &mut out),
        CellOutcome::Replaced
    );
    assert_eq!(out, b"\xff\xfe **** \xff");
}

#[test]
fn stats_count_cells_per_rule() {
    let mut a = rule(&["email"], &[], MaskStrategy::Redact);
    a.name = Some("emails".into());
    let mut b = rule(&[], &["credit_card", "us_ssn"], MaskStrategy::Redact);
    b.name = Some("numbers".into());
    let mut c = rule(&["never"], &[], MaskStrategy::Redact);
    c.name = Some("unused".into());
    let m = masker(vec![a, b, c]);
    let plan = for_any(&m).plan(&[col("email", 25), col("notes", 25)]);
    let mut stats = plan.new_stats();
    let mut out = Vec::new();
    for _ in 0..3 {
        plan.mask_cell_counted(0, b"x@y.com", &mut out, &mut stats);
    }
    // Two hits of one rule in one cell count as one cell.
    plan.mask_cell_counted(1, b"4111111111111111 and 123-45-6789", &mut out, &mut stats);
    plan.mask_cell_counted(1, b"nothing", &mut out, &mut stats);
    assert_eq!(
        stats.counts(),
        vec![
            crate::record::MaskCount {
                rule: "emails".into(),
                cells: 3
            },
            crate::record::MaskCount {
                rule: "numbers".into(),
                cells: 1
            },
        ]
    );
    assert_eq!(stats.total(), 4);
    let mut more = plan.new_stats();
    more.merge(&stats);
    more.merge(&stats);
    assert_eq!(more.total(), 8);
    more.reset();
    assert!(more.is_empty() && more.counts().is_empty());
}

#[test]
fn mask_text_and_column_text() {
    let m = masker(vec![
        rule(&["email"], &[], MaskStrategy::Partial),
        rule(&[], &["credit_card"], MaskStrategy::Redact),
    ]);
    let cm = for_any(&m);
    assert_eq!(cm.mask_text("plain text"), None);
    assert_eq!(
        cm.mask_text("card 4111111111111111").as_deref(),
        Some("card ****")
    );
    // No e-mail detector, but the column rule still covers a known column.
    assert_eq!(cm.mask_text("john@example.com"), None);
    assert_eq!(
        cm.mask_column_text(None, "email", "john@example.com")
            .as_deref(),
        Some("j****@*****.com")
    );
    assert_eq!(cm.mask_column_text(None, "name", "Alice"), None);
    let mut out = Vec::new();
    assert!(cm.scan(b"4111111111111111", &mut out, None));
    assert_eq!(out, b"****");
    assert!(!cm.scan(b"x", &mut out, None));
}

#[test]
fn debug_output_never_shows_the_hash_key() {
    let cfg = MaskingConfig {
        rules: vec![rule(&["x"], &[], MaskStrategy::Hash)],
        custom_detectors: BTreeMap::new(),
        hash_key: Some(b"super-secret-key".to_vec()),
    };
    assert!(!format!("{cfg:?}").contains("super"));
    let m = Masker::new(&cfg).unwrap();
    assert!(!format!("{m:?}").contains("super"));
    assert!(format!("{:?}", for_any(&m)).contains("shop"));
}
