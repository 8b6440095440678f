//! Content detectors: find sensitive values inside text, and validate every
//! candidate (Luhn, mod-97, SSN area rules, JWT header, ...) before it counts.
//!
//! Scanning is two-staged so that ordinary text stays cheap: one pass over the
//! bytes builds a [`Profile`] (digit count, `@`, dashes, ...), and only the
//! detectors whose minimum needs are met run their regex. Custom detectors are
//! prefiltered together by one `RegexSet`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use regex::bytes::{Regex, RegexSet};

/// A built-in detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Detector {
    PrivateKey,
    Jwt,
    AwsAccessKey,
    Email,
    Iban,
    CreditCard,
    UsSsn,
    Phone,
    IpAddress,
}

/// The config names of the built-in detectors, for error messages.
pub(crate) const BUILTIN_NAMES: &str =
    "email, credit_card, us_ssn, phone, iban, ip_address, aws_access_key, jwt, private_key";

impl Detector {
    /// All built-ins, in priority order: when two hits start at the same byte
    /// and have the same length, the earlier detector wins.
    pub const ALL: [Detector; 9] = [
        Detector::PrivateKey,
        Detector::Jwt,
        Detector::AwsAccessKey,
        Detector::Email,
        Detector::Iban,
        Detector::CreditCard,
        Detector::UsSsn,
        Detector::Phone,
        Detector::IpAddress,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Detector::PrivateKey => "private_key",
            Detector::Jwt => "jwt",
            Detector::AwsAccessKey => "aws_access_key",
            Detector::Email => "email",
            Detector::Iban => "iban",
            Detector::CreditCard => "credit_card",
            Detector::UsSsn => "us_ssn",
            Detector::Phone => "phone",
            Detector::IpAddress => "ip_address",
        }
    }

    pub fn from_name(name: &str) -> Option<Detector> {
        Detector::ALL.into_iter().find(|d| d.name() == name)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Whether text with this profile can possibly contain a hit.
    fn may_match(self, p: &Profile) -> bool {
        match self {
            Detector::PrivateKey => p.dashes >= 10,
            Detector::Jwt => p.dots >= 2 && p.len >= 16,
            Detector::AwsAccessKey => p.upper >= 4 && p.len >= 20,
            Detector::Email => p.at,
            Detector::Iban => p.digits >= 2 && p.upper >= 2 && p.len >= 15,
            Detector::CreditCard => p.digits >= 13,
            Detector::UsSsn => p.digits >= 9,
            Detector::Phone => p.digits >= 8,
            Detector::IpAddress => (p.digits >= 4 && p.dots >= 3) || p.colons >= 2,
        }
    }
}

/// What found a hit; partial rendering depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HitKind {
    Builtin(Detector),
    Custom(usize),
}

impl HitKind {
    /// Lower sorts first when two hits tie on start and length.
    fn priority(self) -> usize {
        match self {
            HitKind::Builtin(d) => d.index(),
            HitKind::Custom(i) => Detector::ALL.len().saturating_add(i),
        }
    }
}

/// A validated sensitive value at `start..end` of the scanned text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hit {
    pub start: usize,
    pub end: usize,
    pub kind: HitKind,
}

/// Which detectors one connection runs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Enabled {
    pub builtin: [bool; 9],
    pub custom: Vec<bool>,
    pub any_custom: bool,
}

impl Enabled {
    pub(crate) fn any(&self) -> bool {
        self.any_custom || self.builtin.iter().any(|b| *b)
    }
}

/// Cheap facts about a text, gathered in one pass before any regex runs.
#[derive(Debug, Default, Clone, Copy)]
struct Profile {
    len: usize,
    digits: usize,
    upper: usize,
    dots: usize,
    colons: usize,
    dashes: usize,
    at: bool,
}

impl Profile {
    fn of(text: &[u8]) -> Profile {
        let mut p = Profile {
            len: text.len(),
            ..Profile::default()
        };
        for &b in text {
            match b {
                b'0'..=b'9' => p.digits += 1,
                b'A'..=b'Z' => p.upper += 1,
                b'.' => p.dots += 1,
                b':' => p.colons += 1,
                b'-' => p.dashes += 1,
                b'@' => p.at = true,
                _ => {}
            }
        }
        p
    }
}

/// The compiled candidate regexes of the built-in detectors. They are plain
/// byte regexes with ASCII classes, so cells need not be valid UTF-8.
#[derive(Debug)]
pub(crate) struct BuiltinRegexes {
    email: Regex,
    digit_run: Regex,
    ssn: Regex,
    phone: Regex,
    iban: Regex,
    ipv4: Regex,
    ipv6: Regex,
    aws: Regex,
    jwt: Regex,
    pem_begin: Regex,
    pem_end: Regex,
}

impl BuiltinRegexes {
    pub(crate) fn new() -> Result<BuiltinRegexes, regex::Error> {
        Ok(BuiltinRegexes {
            email: Regex::new(
                r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}",
            )?,
            // Digit groups joined by single spaces or dashes; cards are cut
            // out of these runs group by group.
            digit_run: Regex::new(r"[0-9]+(?:[ \-][0-9]+)*")?,
            ssn: Regex::new(r"[0-9]{3}[ \-][0-9]{2}[ \-][0-9]{4}")?,
            phone: Regex::new(concat!(
                // E.164-ish: +CC then up to five groups, optionally in parentheses.
                r"\+[1-9][0-9]{0,2}(?:[ .\-]?(?:\([0-9]{1,4}\)|[0-9]{1,5})){1,5}",
                // NANP: (415) 555-2671, 415-555-2671, 415.555.2671, 1-415-555-2671.
                r"|(?:1[ .\-]?)?(?:\([2-9][0-9]{2}\)[ .\-]?|[2-9][0-9]{2}[ .\-])[2-9][0-9]{2}[ .\-][0-9]{4}",
            ))?,
            iban: Regex::new(r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}")?,
            ipv4: Regex::new(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")?,
            ipv6: Regex::new(
                r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})?",
            )?,
            aws: Regex::new(r"(?:AKIA|ASIA)[A-Z0-9]{16}")?,
            // A JWT header is JSON starting with `{`, which base64url-encodes
            // to `e` followed by `y` (`{"`, `{ `) or `w` (`{` + newline/tab).
            jwt: Regex::new(r"e[wy][A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")?,
            pem_begin: Regex::new(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")?,
            pem_end: Regex::new(r"-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")?,
        })
    }
}

/// User-defined detectors from `[masking_detectors]`.
#[derive(Debug, Default)]
pub(crate) struct CustomDetectors {
    pub names: Vec<String>,
    regexes: Vec<Regex>,
    set: Option<RegexSet>,
}

impl CustomDetectors {
    /// Compiles and checks every custom detector; the error names it.
    pub(crate) fn new(
        defs: &std::collections::BTreeMap<String, String>,
    ) -> Result<CustomDetectors, (String, String)> {
        let mut out = CustomDetectors::default();
        for (name, pattern) in defs {
            if name.trim().is_empty() {
                return Err((name.clone(), "the detector name is empty".into()));
            }
            if Detector::from_name(name).is_some() {
                return Err((
                    name.clone(),
                    "this name belongs to a built-in detector; pick another".into(),
                ));
            }
            let re =
                Regex::new(pattern).map_err(|e| (name.clone(), format!("invalid regex: {e}")))?;
            if re.is_match(b"") {
                return Err((
                    name.clone(),
                    "the regex matches the empty string, so it would match everywhere".into(),
                ));
            }
            out.names.push(name.clone());
            out.regexes.push(re);
        }
        if !out.regexes.is_empty() {
            let set = RegexSet::new(defs.values())
                .map_err(|e| ("(all)".to_string(), format!("regex set: {e}")))?;
            out.set = Some(set);
        }
        Ok(out)
    }

    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

/// Finds validated hits in `text`, sorted by start and non-overlapping.
/// `hits` is cleared first; it only allocates when something was found.
pub(crate) fn find_hits(
    re: &BuiltinRegexes,
    custom: &CustomDetectors,
    enabled: &Enabled,
    text: &[u8],
    hits: &mut Vec<Hit>,
) {
    hits.clear();
    if !enabled.any() {
        return;
    }
    let profile = Profile::of(text);
    for d in Detector::ALL {
        if enabled.builtin.get(d.index()).copied().unwrap_or(false) && d.may_match(&profile) {
            find_builtin(re, d, text, hits);
        }
    }
    if enabled.any_custom
        && let Some(set) = &custom.set
    {
        for i in set.matches(text).iter() {
            if !enabled.custom.get(i).copied().unwrap_or(false) {
                continue;
            }
            if let Some(r) = custom.regexes.get(i) {
                hits.extend(r.find_iter(text).filter(|m| !m.is_empty()).map(|m| Hit {
                    start: m.start(),
                    end: m.end(),
                    kind: HitKind::Custom(i),
                }));
            }
        }
    }
    resolve_overlaps(hits);
}

/// Keeps the longest hit among those starting at the same place, and drops
/// hits that start inside an earlier kept one.
fn resolve_overlaps(hits: &mut Vec<Hit>) {
    if hits.len() < 2 {
        return;
    }
    hits.sort_unstable_by(|a, b| {
        a.start
            .cmp(&b.start)
            .then(b.end.cmp(&a.end))
            .then(a.kind.priority().cmp(&b.kind.priority()))
    });
    let mut covered = 0usize;
    hits.retain(|h| {
        if h.start < covered {
            false
        } else {
            covered = h.end;
            true
        }
    });
}

fn find_builtin(re: &BuiltinRegexes, d: Detector, text: &[u8], hits: &mut Vec<Hit>) {
    let mut push = |start: usize, end: usize| {
        hits.push(Hit {
            start,
            end,
            kind: HitKind::Builtin(d),
        })
    };
    match d {
        Detector::Email => {
            for m in re.email.find_iter(text) {
                if let Some((s, e)) = email_bounds(text, m.start(), m.end()) {
                    push(s, e);
                }
            }
        }
        Detector::CreditCard => {
            for m in re.digit_run.find_iter(text) {
                if digits_in(&text[m.range()]) >= 13 {
                    card_windows(text, m.start(), m.end(), &mut push);
                }
            }
        }
        Detector::UsSsn => {
            for m in re.ssn.find_iter(text) {
                if clean_left(text, m.start())
                    && clean_right(text, m.end())
                    && ssn_valid(&text[m.range()])
                {
                    push(m.start(), m.end());
                }
            }
        }
        Detector::Phone => {
            for m in re.phone.find_iter(text) {
                if clean_left(text, m.start())
                    && clean_right(text, m.end())
                    && phone_valid(&text[m.range()])
                {
                    push(m.start(), m.end());
                }
            }
        }
        Detector::Iban => {
            for m in re.iban.find_iter(text) {
                if let Some(end) = iban_end(text, m.start(), m.end()) {
                    push(m.start(), end);
                }
            }
        }
        Detector::IpAddress => {
            for m in re.ipv4.find_iter(text) {
                // `/` may follow: CIDR suffixes are common (`10.0.0.0/8`).
                let right_ok = match text.get(m.end()) {
                    None => true,
                    Some(b) if is_word(*b) => false,
                    Some(b'.') => !text.get(m.end() + 1).is_some_and(u8::is_ascii_digit),
                    Some(_) => true,
                };
                if clean_left(text, m.start())
                    && right_ok
                    && ascii(&text[m.range()]).is_some_and(|s| Ipv4Addr::from_str(s).is_ok())
                {
                    push(m.start(), m.end());
                }
            }
            for m in re.ipv6.find_iter(text) {
                if ipv6_valid(text, m.start(), m.end()) {
                    push(m.start(), m.end());
                }
            }
        }
        Detector::AwsAccessKey => {
            for m in re.aws.find_iter(text) {
                let left_ok = m.start() == 0
                    || !text
                        .get(m.start() - 1)
                        .is_some_and(|b| b.is_ascii_alphanumeric());
                let right_ok = !text.get(m.end()).is_some_and(|b| b.is_ascii_alphanumeric());
                if left_ok && right_ok {
                    push(m.start(), m.end());
                }
            }
        }
        Detector::Jwt => {
            for m in re.jwt.find_iter(text) {
                let left_ok = m.start() == 0
                    || !text
                        .get(m.start() - 1)
                        .is_some_and(|b| is_b64url(*b) || *b == b'.');
                if left_ok && jwt_valid(&text[m.range()]) {
                    push(m.start(), m.end());
                }
            }
        }
        Detector::PrivateKey => {
            let mut from = 0;
            while let Some(b) = re.pem_begin.find_at(text, from) {
                // A block without its END line (truncated output) is masked
                // to the end of the text rather than leaked.
                let end = re
                    .pem_end
                    .find_at(text, b.end())
                    .map_or(text.len(), |e| e.end());
                push(b.start(), end);
                from = end;
                if from >= text.len() {
                    break;
                }
            }
        }
    }
}

fn ascii(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

fn digits_in(bytes: &[u8]) -> usize {
    bytes.iter().filter(|b| b.is_ascii_digit()).count()
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// True when the token starting at `start` is not glued to a word on its left
/// (`ORD-415-555-2671`, `v1.2.3.4`, `x123-45-6789` are not phone/IP/SSN).
fn clean_left(text: &[u8], start: usize) -> bool {
    let Some(prev) = start.checked_sub(1).and_then(|i| text.get(i)) else {
        return true;
    };
    if is_word(*prev) {
        return false;
    }
    if matches!(prev, b'-' | b'.' | b'/' | b'+') {
        let before = start.checked_sub(2).and_then(|i| text.get(i));
        return !before.is_some_and(|b| b.is_ascii_alphanumeric());
    }
    true
}

/// True when the token ending at `end` does not run on into a longer number or
/// word (`123-45-6789-01`, `1.2.3.4.5`).
fn clean_right(text: &[u8], end: usize) -> bool {
    match text.get(end) {
        None => true,
        Some(b) if is_word(*b) => false,
        Some(b'-' | b'.' | b'/' | b':') => !text.get(end + 1).is_some_and(u8::is_ascii_digit),
        Some(_) => true,
    }
}

/// Trims an e-mail candidate to a plausible address: the local part may not
/// start with a dot, and must be 1..=64 bytes.
fn email_bounds(text: &[u8], start: usize, end: usize) -> Option<(usize, usize)> {
    let m = text.get(start..end)?;
    let at = m.iter().position(|b| *b == b'@')?;
    let lead = m.iter().take(at).take_while(|b| **b == b'.').count();
    let local = at - lead;
    if local == 0 || local > 64 {
        return None;
    }
    Some((start + lead, end))
}

/// Cuts card numbers out of one run of digit groups `text[s..e]`: a window of
/// whole groups whose layout looks like a card (one block of 13-19 digits,
/// 4-4-4-4(-3), 4-6-5, 4-6-4) with a known brand prefix and a valid Luhn sum.
/// Groups glued to letters are skipped, so `ID4111...` stays.
fn card_windows(text: &[u8], s: usize, e: usize, push: &mut impl FnMut(usize, usize)) {
    let Some(run) = text.get(s..e) else {
        return;
    };
    let lead_glued = s
        .checked_sub(1)
        .and_then(|i| text.get(i))
        .is_some_and(u8::is_ascii_alphanumeric);
    let trail_glued = text.get(e).is_some_and(u8::is_ascii_alphanumeric);
    let group_end = |from: usize| {
        run.get(from..)
            .and_then(|r| r.iter().position(|b| !b.is_ascii_digit()))
            .map_or(run.len(), |p| from + p)
    };
    let mut pos = 0usize;
    while pos < run.len() {
        let next_group = {
            let g = group_end(pos);
            if g >= run.len() { run.len() } else { g + 1 }
        };
        if pos == 0 && lead_glued {
            pos = next_group;
            continue;
        }
        let mut sizes = [0usize; 19];
        let mut groups = 0usize;
        let mut digits = 0usize;
        let mut best = None;
        let mut q = pos;
        while q < run.len() {
            let gend = group_end(q);
            let glen = gend - q;
            digits += glen;
            if digits > 19 {
                break;
            }
            if let Some(slot) = sizes.get_mut(groups) {
                *slot = glen;
            }
            groups += 1;
            let glued = gend >= run.len() && trail_glued;
            if digits >= 13
                && !glued
                && card_layout_ok(sizes.get(..groups).unwrap_or(&[]))
                && run.get(pos..gend).is_some_and(card_number_ok)
            {
                best = Some(gend);
            }
            if gend >= run.len() {
                break;
            }
            q = gend + 1;
        }
        match best {
            Some(end) => {
                push(s + pos, s + end);
                pos = if end >= run.len() { run.len() } else { end + 1 };
            }
            None => pos = next_group,
        }
    }
}

fn card_layout_ok(sizes: &[usize]) -> bool {
    match sizes {
        [] => false,
        [_] => true,
        [4, 6, 5] | [4, 6, 4] => true,
        [init @ .., last] => init.iter().all(|g| *g == 4) && (1..=4).contains(last),
    }
}

/// Brand prefix, length and Luhn checks over digits (separators ignored).
pub(crate) fn card_number_ok(bytes: &[u8]) -> bool {
    // A fixed buffer: this runs for every long digit run, so no allocation.
    let mut buf = [0u8; 19];
    let mut n = 0usize;
    for b in bytes.iter().filter(|b| b.is_ascii_digit()) {
        match buf.get_mut(n) {
            Some(slot) => *slot = b - b'0',
            None => return false,
        }
        n += 1;
    }
    if n < 13 {
        return false;
    }
    let digits = buf.get(..n).unwrap_or(&[]);
    let prefix = |k: usize| {
        digits
            .iter()
            .take(k)
            .fold(0u32, |acc, d| acc * 10 + u32::from(*d))
    };
    let brand = match digits.first() {
        Some(4) => matches!(n, 13 | 16 | 19),
        Some(5) => {
            if (51..=55).contains(&prefix(2)) {
                n == 16
            } else {
                true // Maestro 50, 56-59
            }
        }
        Some(2) => (2221..=2720).contains(&prefix(4)) && n == 16,
        Some(3) => match prefix(2) {
            34 | 37 => n == 15,
            35 => (3528..=3589).contains(&prefix(4)) && n >= 16,
            36 | 38 | 39 => n >= 14,
            30 => (300..=305).contains(&prefix(3)) && n >= 14,
            _ => false,
        },
        Some(6) => true, // Discover, UnionPay, Maestro
        _ => false,
    };
    brand && luhn_ok(digits)
}

/// Luhn checksum over decimal digit values.
pub(crate) fn luhn_ok(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(*d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// `AAA-GG-SSSS` with one kind of separator and the SSA's validity rules:
/// area not 000, 666 or 9xx; group not 00; serial not 0000.
fn ssn_valid(m: &[u8]) -> bool {
    let [a1, a2, a3, s1, g1, g2, s2, r1, r2, r3, r4] = m else {
        return false;
    };
    if s1 != s2 {
        return false;
    }
    let area = [*a1, *a2, *a3];
    area != *b"000"
        && area != *b"666"
        && *a1 != b'9'
        && [*g1, *g2] != *b"00"
        && [*r1, *r2, *r3, *r4] != *b"0000"
}

fn phone_valid(m: &[u8]) -> bool {
    let digits = digits_in(m);
    let open = m.iter().filter(|b| **b == b'(').count();
    let close = m.iter().filter(|b| **b == b')').count();
    if open != close {
        return false;
    }
    if m.first() == Some(&b'+') {
        (8..=15).contains(&digits)
    } else {
        // The NANP branch fixes the shape; 10 digits, or 11 with a leading 1.
        digits == 10 || digits == 11
    }
}

/// Country codes that issue IBANs (members and the common partner formats).
const IBAN_COUNTRIES: &str = "AD AE AL AO AT AZ BA BE BF BG BH BI BJ BR BY CF CG CH CI CM CR CV CY CZ DE DJ DK DO DZ EE EG ES FI FK FO FR GA GB GE GI GL GQ GR GT GW HN HR HU IE IL IQ IR IS IT JO KM KW KZ LB LC LI LT LU LV LY MA MC MD ME MG MK ML MN MR MT MU MZ NE NI NL NO OM PK PL PS PT QA RO RS RU SA SC SD SE SI SK SM SN SO ST SV TD TG TL TN TR UA VA VG XK YE";

/// Returns where a valid IBAN starting at `start` ends. The candidate regex
/// may run on into following words (`... 00 EUR`), so trailing space-separated
/// groups are dropped until the check digits work out.
fn iban_end(text: &[u8], start: usize, end: usize) -> Option<usize> {
    if start
        .checked_sub(1)
        .and_then(|i| text.get(i))
        .is_some_and(u8::is_ascii_alphanumeric)
    {
        return None;
    }
    let mut end = end;
    loop {
        let cand = text.get(start..end)?;
        let right_ok = !text.get(end).is_some_and(u8::is_ascii_alphanumeric);
        if right_ok && iban_valid(cand) {
            return Some(end);
        }
        end = start + cand.iter().rposition(|b| *b == b' ')?;
    }
}

/// Country code, length 15..=34 and the ISO 13616 mod-97 check.
pub(crate) fn iban_valid(bytes: &[u8]) -> bool {
    let mut buf = [0u8; 34];
    let mut n = 0usize;
    for b in bytes.iter().filter(|b| **b != b' ') {
        match buf.get_mut(n) {
            Some(slot) => *slot = *b,
            None => return false,
        }
        n += 1;
    }
    if n < 15 {
        return false;
    }
    let compact = buf.get(..n).unwrap_or(&[]);
    let (Some(country), Some(check)) = (compact.get(..2), compact.get(2..4)) else {
        return false;
    };
    let Ok(country) = std::str::from_utf8(country) else {
        return false;
    };
    if !IBAN_COUNTRIES.split(' ').any(|c| c == country) || !check.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let mut rem = 0u32;
    for b in compact.iter().skip(4).chain(compact.iter().take(4)) {
        rem = match b {
            b'0'..=b'9' => (rem * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(b - b'A') + 10) % 97,
            _ => return false,
        };
    }
    rem == 1
}

fn ipv6_valid(text: &[u8], start: usize, end: usize) -> bool {
    let left_ok = !start
        .checked_sub(1)
        .and_then(|i| text.get(i))
        .is_some_and(|b| is_word(*b) || *b == b':' || *b == b'.');
    let right_ok = !text
        .get(end)
        .is_some_and(|b| is_word(*b) || *b == b':' || *b == b'.');
    let Some(m) = text.get(start..end) else {
        return false;
    };
    // Requiring a decimal digit keeps `a::b` and `dead::beef` (code, not
    // addresses) out; timestamps and MACs fail the parse.
    left_ok
        && right_ok
        && m.iter().any(u8::is_ascii_digit)
        && ascii(m).is_some_and(|s| Ipv6Addr::from_str(s).is_ok())
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Three base64url segments whose first decodes to a JSON object with `alg`.
fn jwt_valid(m: &[u8]) -> bool {
    let mut parts = m.split(|b| *b == b'.');
    let (Some(header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    if payload.is_empty() || payload.len() % 4 == 1 {
        return false;
    }
    // Headers are small; a huge "header" is not a JWT.
    if header.len() > 4096 {
        return false;
    }
    let Some(json) = b64url_decode(header) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&json)
        .ok()
        .is_some_and(|v| v.get("alg").is_some())
}

/// Unpadded base64url decoding; `None` on any invalid input.
fn b64url_decode(input: &[u8]) -> Option<Vec<u8>> {
    fn val(b: u8) -> Option<u32> {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        Some(u32::from(v))
    }
    if input.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    for chunk in input.chunks(4) {
        let mut acc = 0u32;
        for (i, b) in chunk.iter().enumerate() {
            acc |= val(*b)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        let n = chunk.len() - 1;
        out.extend(bytes.iter().skip(1).take(n));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_enabled() -> Enabled {
        Enabled {
            builtin: [true; 9],
            custom: vec![],
            any_custom: false,
        }
    }

    /// Runs every built-in detector and returns `(detector, matched text)`.
    fn scan(text: &str) -> Vec<(Detector, String)> {
        let re = BuiltinRegexes::new().unwrap();
        let mut hits = Vec::new();
        find_hits(
            &re,
            &CustomDetectors::default(),
            &all_enabled(),
            text.as_bytes(),
            &mut hits,
        );
        hits.iter()
            .map(|h| match h.kind {
                HitKind::Builtin(d) => (d, text[h.start..h.end].to_string()),
                HitKind::Custom(_) => unreachable!(),
            })
            .collect()
    }

    fn check(text: &str, expected: &[(Detector, &str)]) {
        let got = scan(text);
        let want: Vec<(Detector, String)> =
            expected.iter().map(|(d, s)| (*d, s.to_string())).collect();
        assert_eq!(got, want, "scanning {text:?}");
    }

    fn none(text: &str) {
        check(text, &[]);
    }

    #[test]
    fn emails() {
        use Detector::Email;
        check("john.doe@example.com", &[(Email, "john.doe@example.com")]);
        check(
            "Key (email)=(john@example.com) already exists.",
            &[(Email, "john@example.com")],
        );
        check(
            "mail a.b+tag@mail.example.co.uk.",
            &[(Email, "a.b+tag@mail.example.co.uk")],
        );
        check(".x@example.org", &[(Email, "x@example.org")]);
        none("user@localhost");
        none("@example.com");
        none("not an email @ all");
        none("foo@bar");
    }

    #[test]
    fn credit_cards_need_luhn_brand_and_layout() {
        use Detector::CreditCard;
        check(
            "4111 1111 1111 1111",
            &[(CreditCard, "4111 1111 1111 1111")],
        );
        check(
            "4111-1111-1111-1111",
            &[(CreditCard, "4111-1111-1111-1111")],
        );
        check(
            "card=4111111111111111;",
            &[(CreditCard, "4111111111111111")],
        );
        check(
            "amex 3782 822463 10005 ok",
            &[(CreditCard, "3782 822463 10005")],
        );
        check("5555555555554444", &[(CreditCard, "5555555555554444")]);
        check("6011111111111117", &[(CreditCard, "6011111111111117")]);
        // A trailing unrelated number does not hide the card.
        check(
            "4111 1111 1111 1111 2 items",
            &[(CreditCard, "4111 1111 1111 1111")],
        );
        // Luhn fails.
        none("4111 1111 1111 1112");
        none("4111111111111112");
        // Unknown brand prefix (order numbers, snowflake ids).
        none("1000000000000008");
        none("order 100000000000000000");
        // Too long to be one card.
        none("41111111111111111111111");
        // Glued to letters.
        none("ID4111111111111111");
        none("4111111111111111x");
        // UUID-like all-digit groups do not form a card layout.
        none("12345678-1234-1234-1234-123456789012");
        // Timestamps and dates.
        none("2024-01-15 10:30:00.123456");
        none("20240115103000123");
    }

    #[test]
    fn ssn_area_group_serial_rules() {
        use Detector::UsSsn;
        check("ssn 123-45-6789", &[(UsSsn, "123-45-6789")]);
        check("SSN:123 45 6789.", &[(UsSsn, "123 45 6789")]);
        none("000-12-3456");
        none("666-12-3456");
        none("900-12-3456");
        none("123-00-4567");
        none("123-45-0000");
        none("123-45 6789");
        none("1123-45-6789");
        none("123-45-67890");
        none("ORD-123-45-6789");
        none("2024-01-15");
    }

    #[test]
    fn phones_but_not_dates_or_order_numbers() {
        use Detector::Phone;
        check("+1 (415) 555-2671", &[(Phone, "+1 (415) 555-2671")]);
        check("+44 20 7946 0958", &[(Phone, "+44 20 7946 0958")]);
        check("call +14155552671 now", &[(Phone, "+14155552671")]);
        check("(415) 555-2671", &[(Phone, "(415) 555-2671")]);
        check("tel: 415-555-2671", &[(Phone, "415-555-2671")]);
        check("415.555.2671", &[(Phone, "415.555.2671")]);
        check("1-800-555-0199", &[(Phone, "1-800-555-0199")]);
        none("2024-01-15 10:30:00");
        none("2024-01-15T10:30:00Z");
        none("01/15/2024");
        none("ORD-415-555-2671");
        none("order 4155552671");
        none("+1234");
        none("v2.345.6789");
        none("1700000000");
        none("12415-555-2671");
    }

    #[test]
    fn ibans_with_mod97() {
        use Detector::Iban;
        check(
            "DE89370400440532013000",
            &[(Iban, "DE89370400440532013000")],
        );
        check(
            "pay to GB82 WEST 1234 5698 7654 32 EUR",
            &[(Iban, "GB82 WEST 1234 5698 7654 32")],
        );
        check("NO9386011117947", &[(Iban, "NO9386011117947")]);
        none("DE89370400440532013001");
        none("ZZ89370400440532013000");
        none("XDE89370400440532013000");
    }

    #[test]
    fn ip_addresses() {
        use Detector::IpAddress;
        check("from 192.168.1.20 at", &[(IpAddress, "192.168.1.20")]);
        check("10.0.0.1/8", &[(IpAddress, "10.0.0.1")]);
        check("host 2001:db8::1 up", &[(IpAddress, "2001:db8::1")]);
        check(
            "[fe80::1ff:fe23:4567:890a]:5432",
            &[(IpAddress, "fe80::1ff:fe23:4567:890a")],
        );
        check("::ffff:192.0.2.1", &[(IpAddress, "::ffff:192.0.2.1")]);
        none("256.1.1.1");
        none("1.2.3");
        none("v1.2.3.4");
        none("1.2.3.4.5");
        none("01.02.03.04");
        none("10:30:00");
        none("00:1A:2B:3C:4D:5E");
        none("std::vector");
        none("a::b");
    }

    #[test]
    fn aws_keys() {
        use Detector::AwsAccessKey;
        check(
            "key AKIAIOSFODNN7EXAMPLE end",
            &[(AwsAccessKey, "AKIAIOSFODNN7EXAMPLE")],
        );
        check(
            "ASIAY34FZKBOKMUTVV7A",
            &[(AwsAccessKey, "ASIAY34FZKBOKMUTVV7A")],
        );
        none("AKIAIOSFODNN7EXAMPLEX");
        none("XAKIAIOSFODNN7EXAMPLE");
        none("AKIAiosfodnn7example");
        none("AKIA123");
    }

    #[test]
    fn jwts_need_a_json_header_with_alg() {
        use Detector::Jwt;
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        check(&format!("Authorization: Bearer {jwt}"), &[(Jwt, jwt)]);
        // Valid base64url, JSON without alg: `{"typ":"JWT"}`.
        none("eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiIxIn0.c2ln");
        // Not base64 JSON at all.
        none("eyxxxxxxxxxxxx.yyyyyyyyyy.zzzz");
        none("example.com.au is a domain");
        none("version 1.2.3");
    }

    #[test]
    fn pem_private_keys_including_truncated_ones() {
        use Detector::PrivateKey;
        let key = "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n-----END RSA PRIVATE KEY-----";
        check(&format!("key:\n{key}\ntrailer"), &[(PrivateKey, key)]);
        let open = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC";
        check(&format!("x {open}"), &[(PrivateKey, open)]);
        none("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----");
        none("-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----");
    }

    #[test]
    fn uuids_versions_and_plain_text_are_not_sensitive() {
        none("550e8400-e29b-41d4-a716-446655440000");
        none("12345678-1234-5678-1234-567812345678");
        none("version 10.2.3, build 2024.01.15");
        none("Alice Smith");
        none("order ORD-12345678 shipped 2024-01-15 10:30:00+00");
        none("");
    }

    #[test]
    fn overlapping_hits_keep_the_longest() {
        // The e-mail wins over nothing; the card inside a PEM block is covered.
        let text = "-----BEGIN PRIVATE KEY-----\n4111111111111111\n-----END PRIVATE KEY-----";
        let got = scan(text);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, Detector::PrivateKey);
    }

    #[test]
    fn luhn_and_mod97_helpers() {
        assert!(luhn_ok(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 3]));
        assert!(!luhn_ok(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 4]));
        assert!(iban_valid(b"GB82 WEST 1234 5698 7654 32"));
        assert!(!iban_valid(b"GB82 WEST 1234 5698 7654 33"));
        assert_eq!(b64url_decode(b"eyJhIjoxfQ").unwrap(), br#"{"a":1}"#);
        assert!(b64url_decode(b"e").is_none());
        assert!(b64url_decode(b"e$==").is_none());
    }

    #[test]
    fn custom_detectors_are_validated_and_run() {
        let mut defs = std::collections::BTreeMap::new();
        defs.insert("order_ref".to_string(), "ORD-[0-9]{8}".to_string());
        let custom = CustomDetectors::new(&defs).unwrap();
        let re = BuiltinRegexes::new().unwrap();
        let enabled = Enabled {
            builtin: [false; 9],
            custom: vec![true],
            any_custom: true,
        };
        let mut hits = Vec::new();
        find_hits(
            &re,
            &custom,
            &enabled,
            b"ref ORD-12345678 and ORD-1",
            &mut hits,
        );
        assert_eq!(
            hits,
            vec![Hit {
                start: 4,
                end: 16,
                kind: HitKind::Custom(0)
            }]
        );

        for (name, pattern) in [
            ("bad", "ORD-[0-9"),
            ("empty", "x*"),
            ("email", "x"),
            (" ", "x"),
        ] {
            let mut defs = std::collections::BTreeMap::new();
            defs.insert(name.to_string(), pattern.to_string());
            assert!(CustomDetectors::new(&defs).is_err(), "{name}: {pattern}");
        }
    }
}
