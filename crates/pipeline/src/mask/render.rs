//! Replacement text for masked values: `****`, shape-keeping partial forms, and
//! keyed hashes.
//!
//! Every replacement is ASCII drawn from digits, letters, `*`, `-`, `+`, `(`,
//! `)`, `.`, `@`, `:` and space, so it can be dropped into a JSON string, a
//! COPY text field or an error message without escaping.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::detect::{Detector, HitKind};

pub(crate) type HmacSha256 = Hmac<Sha256>;

pub(crate) const REDACTED: &[u8] = b"****";

/// `hash:` + the first 16 hex digits (64 bits) of HMAC-SHA256(key, value).
/// 64 bits keep joins and debugging working while staying short.
pub(crate) fn hash_into(mac: &HmacSha256, value: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = mac.clone().chain_update(value).finalize().into_bytes();
    out.extend_from_slice(b"hash:");
    for b in digest.iter().take(8) {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0x0f)]);
    }
}

/// Partial form of a value found by a detector.
pub(crate) fn partial_hit(kind: HitKind, value: &[u8], keep: usize, out: &mut Vec<u8>) {
    match kind {
        HitKind::Builtin(Detector::Email) => email_partial(value, out),
        HitKind::Builtin(Detector::CreditCard) => card_partial(value, keep, out),
        HitKind::Builtin(Detector::UsSsn) => ssn_partial(value, keep, out),
        HitKind::Builtin(Detector::Phone) => phone_partial(value, keep, out),
        HitKind::Builtin(Detector::Iban) => iban_partial(value, keep, out),
        // Keys, tokens, addresses and custom values have no part safe to show.
        HitKind::Builtin(
            Detector::IpAddress | Detector::AwsAccessKey | Detector::Jwt | Detector::PrivateKey,
        )
        | HitKind::Custom(_) => out.extend_from_slice(REDACTED),
    }
}

/// Partial form of a whole cell named by a column rule. The value's shape
/// picks the form: an e-mail, an SSN (9 digits), a card (13-19 digits), a
/// phone number (7-15 digits with phone punctuation), an IBAN; anything else
/// is redacted.
pub(crate) fn partial_whole(value: &[u8], keep: usize, out: &mut Vec<u8>) {
    let v = value.trim_ascii();
    let digits = v.iter().filter(|b| b.is_ascii_digit()).count();
    let only = |extra: &[u8]| v.iter().all(|b| b.is_ascii_digit() || extra.contains(b));
    if looks_like_email(v) {
        email_partial(v, out);
    } else if digits == 9 && only(b" -") {
        ssn_partial(v, keep, out);
    } else if (13..=19).contains(&digits) && only(b" -") {
        card_partial(v, keep, out);
    } else if (7..=15).contains(&digits) && only(b" +().-") {
        phone_partial(v, keep, out);
    } else if looks_like_iban(v) {
        iban_partial(v, keep, out);
    } else {
        out.extend_from_slice(REDACTED);
    }
}

fn looks_like_email(v: &[u8]) -> bool {
    match v.iter().rposition(|b| *b == b'@') {
        Some(at) => at > 0 && at + 1 < v.len() && !v.iter().any(u8::is_ascii_whitespace),
        None => false,
    }
}

fn looks_like_iban(v: &[u8]) -> bool {
    let compact = v.iter().filter(|b| **b != b' ').count();
    (15..=34).contains(&compact)
        && v.get(..2)
            .is_some_and(|c| c.iter().all(u8::is_ascii_uppercase))
        && v.get(2..4)
            .is_some_and(|c| c.iter().all(u8::is_ascii_digit))
        && v.iter().all(|b| b.is_ascii_alphanumeric() || *b == b' ')
}

/// `john.doe@example.com` -> `j****@*****.com`: the first character of the
/// local part (only if alphanumeric), fixed-width stars, and the TLD.
pub(crate) fn email_partial(v: &[u8], out: &mut Vec<u8>) {
    let at = v.iter().rposition(|b| *b == b'@').unwrap_or(v.len());
    let first = v
        .first()
        .filter(|b| b.is_ascii_alphanumeric() && at > 0)
        .copied()
        .unwrap_or(b'*');
    out.push(first);
    out.extend_from_slice(b"****@*****");
    let domain = v.get(at + 1..).unwrap_or(&[]);
    if let Some(dot) = domain.iter().rposition(|b| *b == b'.') {
        let tld = domain.get(dot + 1..).unwrap_or(&[]);
        if !tld.is_empty() && tld.len() <= 24 && tld.iter().all(u8::is_ascii_alphanumeric) {
            out.push(b'.');
            out.extend_from_slice(tld);
        }
    }
}

/// How many trailing digits may be shown: never more than half of them, so
/// a partial form can never give the whole value back.
fn shown(keep: usize, digits: usize) -> usize {
    keep.min(digits / 2)
}

/// Any card layout -> `****-****-****-9012` (fixed width hides the length).
pub(crate) fn card_partial(v: &[u8], keep: usize, out: &mut Vec<u8>) {
    let digits: Vec<u8> = v.iter().copied().filter(u8::is_ascii_digit).collect();
    let k = shown(keep, digits.len());
    out.extend_from_slice(b"****-****-****-");
    if k == 0 {
        out.extend_from_slice(REDACTED);
    } else {
        out.extend_from_slice(digits.get(digits.len() - k..).unwrap_or(&[]));
    }
}

/// `123-45-6789` -> `***-**-6789` (at most the 4 serial digits are shown).
pub(crate) fn ssn_partial(v: &[u8], keep: usize, out: &mut Vec<u8>) {
    let digits: Vec<u8> = v.iter().copied().filter(u8::is_ascii_digit).collect();
    let k = shown(keep.min(4), digits.len());
    out.extend_from_slice(b"***-**-");
    out.extend(std::iter::repeat_n(b'*', 4 - k));
    out.extend_from_slice(digits.get(digits.len() - k..).unwrap_or(&[]));
}

/// `+1 (415) 555-2671` -> `+* (***) ***-2671`: punctuation stays, digits
/// other than the last `keep` become `*`.
pub(crate) fn phone_partial(v: &[u8], keep: usize, out: &mut Vec<u8>) {
    let total = v.iter().filter(|b| b.is_ascii_digit()).count();
    let k = shown(keep, total);
    let mut seen = 0usize;
    for &b in v {
        if b.is_ascii_digit() {
            seen += 1;
            out.push(if seen > total - k { b } else { b'*' });
        } else {
            out.push(b);
        }
    }
}

/// `DE89 3704 0044 0532 0130 00` -> `DE** **** **** **** **30 00`: the
/// country code and the last `keep` characters stay, spacing stays.
pub(crate) fn iban_partial(v: &[u8], keep: usize, out: &mut Vec<u8>) {
    let total = v.iter().filter(|b| **b != b' ').count();
    let k = shown(keep, total.saturating_sub(2));
    let mut seen = 0usize;
    for &b in v {
        if b == b' ' {
            out.push(b);
            continue;
        }
        seen += 1;
        out.push(if seen <= 2 || seen > total - k {
            b
        } else {
            b'*'
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(value: &str, keep: usize) -> String {
        let mut out = Vec::new();
        partial_whole(value.as_bytes(), keep, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn hit(kind: Detector, value: &str) -> String {
        let mut out = Vec::new();
        partial_hit(HitKind::Builtin(kind), value.as_bytes(), 4, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn partial_forms_by_shape() {
        assert_eq!(whole("john.doe@example.com", 4), "j****@*****.com");
        assert_eq!(whole("4111 1111 1111 9012", 4), "****-****-****-9012");
        assert_eq!(whole("4111-1111-1111-9012", 4), "****-****-****-9012");
        assert_eq!(whole("4111111111119012", 4), "****-****-****-9012");
        assert_eq!(whole("4111111111119012", 6), "****-****-****-119012");
        assert_eq!(whole("4111111111119012", 0), "****-****-****-****");
        assert_eq!(whole("123-45-6789", 4), "***-**-6789");
        assert_eq!(whole("123456789", 4), "***-**-6789");
        assert_eq!(whole("123-45-6789", 2), "***-**-**89");
        assert_eq!(whole("+1 (415) 555-2671", 4), "+* (***) ***-2671");
        assert_eq!(whole("4155552671", 4), "******2671");
        assert_eq!(
            whole("DE89 3704 0044 0532 0130 00", 4),
            "DE** **** **** **** **30 00"
        );
        assert_eq!(whole("Alice Smith", 4), "****");
        assert_eq!(whole("", 4), "****");
        assert_eq!(whole("12", 4), "****");
    }

    #[test]
    fn partial_never_shows_more_than_half_the_digits() {
        assert_eq!(whole("1234567", 8), "****567");
        assert_eq!(
            hit(Detector::CreditCard, "4111111111111111"),
            "****-****-****-1111"
        );
    }

    #[test]
    fn email_partial_edge_cases() {
        assert_eq!(hit(Detector::Email, "a@b.co.uk"), "a****@*****.uk");
        assert_eq!(hit(Detector::Email, "_x@host.io"), "*****@*****.io");
        let mut out = Vec::new();
        email_partial(b"\"q\"@x", &mut out);
        assert_eq!(out, b"*****@*****");
    }

    #[test]
    fn secrets_have_no_partial_form() {
        assert_eq!(hit(Detector::AwsAccessKey, "AKIAIOSFODNN7EXAMPLE"), "****");
        assert_eq!(hit(Detector::IpAddress, "10.0.0.1"), "****");
        let mut out = Vec::new();
        partial_hit(HitKind::Custom(0), b"ORD-12345678", 4, &mut out);
        assert_eq!(out, b"****");
    }

    #[test]
    fn hashes_are_keyed_stable_and_short() {
        let a = HmacSha256::new_from_slice(b"key-a").unwrap();
        let b = HmacSha256::new_from_slice(b"key-b").unwrap();
        let h = |mac: &HmacSha256, v: &[u8]| {
            let mut out = Vec::new();
            hash_into(mac, v, &mut out);
            String::from_utf8(out).unwrap()
        };
        let x = h(&a, b"john@example.com");
        assert_eq!(x.len(), "hash:".len() + 16);
        assert!(x.starts_with("hash:"));
        assert!(x[5..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(x, h(&a, b"john@example.com"));
        assert_ne!(x, h(&b, b"john@example.com"));
        assert_ne!(x, h(&a, b"jane@example.com"));
        // RFC 4231 test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?").
        let jefe = HmacSha256::new_from_slice(b"Jefe").unwrap();
        assert_eq!(
            h(&jefe, b"what do ya want for nothing?"),
            "hash:5bdcc146bf60754e"
        );
    }
}
