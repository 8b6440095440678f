//! Property tests for masking: generated sensitive values embedded in text
//! never survive masking, masked output is stable, and no input panics.

use std::collections::BTreeMap;
use std::sync::Arc;

use airlock_pipeline::mask::{
    CellOutcome, ColumnMeta, ConnectionMasker, MaskRuleConfig, MaskStrategy, Masker, MaskingConfig,
};
use airlock_pipeline::model::{ConnectionInfo, Protocol};
use proptest::prelude::*;

const DETECTORS: &[&str] = &[
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

fn masker(strategy: MaskStrategy, columns: &[&str]) -> Arc<ConnectionMasker> {
    let m = Masker::new(&MaskingConfig {
        rules: vec![MaskRuleConfig {
            columns: columns.iter().map(|s| s.to_string()).collect(),
            detectors: DETECTORS.iter().map(|s| s.to_string()).collect(),
            strategy,
            ..MaskRuleConfig::default()
        }],
        custom_detectors: BTreeMap::new(),
        hash_key: Some(b"prop-key".to_vec()),
    })
    .expect("valid config");
    m.for_connection(&ConnectionInfo {
        name: "db".into(),
        protocol: Protocol::Postgres,
        tags: vec![],
    })
    .expect("rule applies")
}

fn strategy() -> impl Strategy<Value = MaskStrategy> {
    prop_oneof![
        Just(MaskStrategy::Redact),
        Just(MaskStrategy::Partial),
        Just(MaskStrategy::Hash),
        Just(MaskStrategy::Null),
    ]
}

/// Appends the Luhn check digit to `payload`.
fn with_luhn(payload: &[u32]) -> Vec<u32> {
    let sum: u32 = payload
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                *d
            }
        })
        .sum();
    let mut v = payload.to_vec();
    v.push((10 - sum % 10) % 10);
    v
}

fn digits(v: &[u32]) -> String {
    v.iter().filter_map(|d| char::from_digit(*d, 10)).collect()
}

/// Valid card numbers of several brands and lengths, in several layouts.
fn card() -> impl Strategy<Value = String> {
    let brand = prop_oneof![
        Just((vec![4u32], 16usize)),
        Just((vec![4], 13)),
        Just((vec![5, 1], 16)),
        Just((vec![5, 5], 16)),
        Just((vec![3, 7], 15)),
        Just((vec![6, 0, 1, 1], 16)),
        Just((vec![2, 2, 2, 1], 16)),
    ];
    (brand, proptest::collection::vec(0u32..10, 18), 0usize..3).prop_map(
        |((prefix, len), rest, layout)| {
            let mut payload = prefix;
            payload.extend(rest);
            payload.truncate(len - 1);
            let number = digits(&with_luhn(&payload));
            let sep = match layout {
                0 => return number,
                1 => " ",
                _ => "-",
            };
            let groups: Vec<&str> = if len == 15 {
                vec![&number[..4], &number[4..10], &number[10..]]
            } else {
                let mut g = Vec::new();
                let mut i = 0;
                while i < number.len() {
                    g.push(&number[i..(i + 4).min(number.len())]);
                    i += 4;
                }
                g
            };
            groups.join(sep)
        },
    )
}

fn email() -> impl Strategy<Value = String> {
    (
        "[a-z][a-z0-9._+-]{0,15}[a-z0-9]",
        "[a-z0-9]{1,12}",
        "(com|org|net|io|co\\.uk|example)",
    )
        .prop_map(|(u, d, t)| format!("{u}@{d}.{t}"))
}

fn ssn() -> impl Strategy<Value = String> {
    (1u32..900, 1u32..100, 1u32..10000, any::<bool>())
        .prop_filter("SSA area rules", |(a, _, _, _)| *a != 666)
        .prop_map(|(a, g, s, dash)| {
            let sep = if dash { "-" } else { " " };
            format!("{a:03}{sep}{g:02}{sep}{s:04}")
        })
}

fn sensitive() -> impl Strategy<Value = String> {
    prop_oneof![card(), email(), ssn()]
}

/// Text around a value: words and punctuation that never glue onto it.
fn filler() -> impl Strategy<Value = String> {
    "[A-Za-z ,;:!?()]{0,20}"
}

fn scan(m: &ConnectionMasker, text: &str) -> String {
    let mut out = Vec::new();
    if m.scan(text.as_bytes(), &mut out, None) {
        String::from_utf8(out).expect("ASCII replacements keep UTF-8")
    } else {
        text.to_string()
    }
}

proptest! {
    #[test]
    fn embedded_values_never_survive_detectors(
        value in sensitive(),
        pre in filler(),
        post in filler(),
        strat in strategy(),
    ) {
        let m = masker(strat, &[]);
        let text = format!("{pre} {value} {post}");
        let masked = scan(&m, &text);
        prop_assert!(!masked.contains(&value), "{value:?} survived in {masked:?}");
        let digits_only: String = value.chars().filter(char::is_ascii_digit).collect();
        if digits_only.len() >= 9 {
            prop_assert!(!masked.contains(&digits_only), "{digits_only:?} in {masked:?}");
        }
    }

    #[test]
    fn several_values_in_one_cell_are_all_masked(
        values in proptest::collection::vec(sensitive(), 1..5),
        strat in strategy(),
    ) {
        let m = masker(strat, &[]);
        let text = values.join(" and ");
        let masked = scan(&m, &text);
        for v in &values {
            prop_assert!(!masked.contains(v.as_str()), "{v:?} survived in {masked:?}");
        }
    }

    #[test]
    fn whole_column_masks_never_return_the_value(
        value in sensitive(),
        strat in strategy(),
    ) {
        let m = masker(strat, &["secret"]);
        let plan = m.plan(&[ColumnMeta {
            name: "Secret".into(),
            table: None,
            type_oid: 25,
            binary: false,
        }]);
        let mut out = Vec::new();
        match plan.mask_cell(0, value.as_bytes(), &mut out) {
            CellOutcome::Unchanged => prop_assert!(false, "column rule left {value:?}"),
            CellOutcome::Null => prop_assert_eq!(strat, MaskStrategy::Null),
            CellOutcome::Replaced => {
                let s = String::from_utf8(out).expect("ASCII");
                prop_assert!(!s.contains(&value), "{value:?} in {s:?}");
            }
        }
    }

    #[test]
    fn masking_is_stable_and_idempotent(value in sensitive(), pre in filler()) {
        // Redact and partial output contain nothing a detector finds again.
        for strat in [MaskStrategy::Redact, MaskStrategy::Partial, MaskStrategy::Null] {
            let m = masker(strat, &[]);
            let text = format!("{pre} {value}");
            let once = scan(&m, &text);
            prop_assert_eq!(&scan(&m, &text), &once);
            prop_assert_eq!(m.mask_text(&once), None, "{:?} re-masked", once);
        }
    }

    #[test]
    fn luhn_invalid_numbers_are_not_cards(value in card(), bump in 1u32..10) {
        // Changing the check digit breaks Luhn; nothing else may claim a
        // plain digit string, so it passes through.
        let plain: String = value.chars().filter(char::is_ascii_digit).collect();
        let last = plain.chars().last().and_then(|c| c.to_digit(10)).unwrap_or(0);
        let broken = format!(
            "{}{}",
            &plain[..plain.len() - 1],
            char::from_digit((last + bump) % 10, 10).unwrap_or('0')
        );
        let m = masker(MaskStrategy::Redact, &[]);
        prop_assert_eq!(m.mask_text(&format!("order {broken} shipped")), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        oid in prop_oneof![Just(25u32), Just(114), Just(3802), Just(23), Just(1009), any::<u32>()],
        binary in any::<bool>(),
        name in "[a-z*]{0,6}",
    ) {
        let m = masker(MaskStrategy::Partial, &["secret", "doc*"]);
        let plan = m.plan(&[
            ColumnMeta { name: name.clone(), table: None, type_oid: oid, binary },
            ColumnMeta { name: "secret".into(), table: Some(name), type_oid: oid, binary },
        ]);
        let mut out = Vec::new();
        for col in 0..3 {
            let _ = plan.mask_cell(col, &bytes, &mut out);
        }
        let _ = m.mask_text(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_text_is_masked_without_panics(text in "\\PC{0,120}") {
        let m = masker(MaskStrategy::Partial, &[]);
        if let Some(masked) = m.mask_text(&text) {
            prop_assert_ne!(masked, text);
        }
    }
}
