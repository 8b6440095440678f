//! Client-side password authentication: MD5 and SCRAM-SHA-256 (RFC 5802, RFC 7677).
//!
//! The proxy uses these when it logs in to the upstream server on the client's
//! behalf. Channel binding is not offered (the GS2 header is always `n,,`).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The SASL mechanism name this module implements.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// Upper bound on the PBKDF2 iteration count a server may demand. PostgreSQL
/// defaults to 4096; a hostile or compromised upstream could otherwise make the
/// proxy burn seconds of CPU per login.
pub const MAX_SCRAM_ITERATIONS: u32 = 1_000_000;

/// `base64("n,,")`: the channel-binding attribute when no binding is used.
const GS2_HEADER_B64: &str = "biws";
const GS2_HEADER: &str = "n,,";
/// Random bytes in a generated client nonce (24 base64 characters).
const NONCE_BYTES: usize = 18;

/// The response to an AuthenticationMD5Password request:
/// `"md5" + hex(md5(hex(md5(password + user)) + salt))`.
pub fn md5_password(user: &str, password: &[u8], salt: [u8; 4]) -> String {
    let inner = hex::encode(
        Md5::new()
            .chain_update(password)
            .chain_update(user)
            .finalize(),
    );
    let outer = Md5::new()
        .chain_update(inner.as_bytes())
        .chain_update(salt)
        .finalize();
    format!("md5{}", hex::encode(outer))
}

/// A failed SCRAM exchange. Messages are safe to show a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A step was called before the step it depends on.
    #[error("SCRAM exchange steps called out of order")]
    OutOfOrder,
    #[error("malformed SCRAM message from server: {0}")]
    Malformed(&'static str),
    /// The server requires an extension (`m=`) this client does not support.
    #[error("server requires an unsupported SCRAM extension")]
    UnsupportedExtension,
    /// The server nonce does not extend the client nonce: a replay or a broken server.
    #[error("server nonce does not extend the client nonce")]
    NonceMismatch,
    #[error("server requested {0} PBKDF2 iterations, outside 1..={MAX_SCRAM_ITERATIONS}")]
    IterationCount(u64),
    /// The server ended the exchange with `e=<reason>`.
    #[error("server rejected authentication: {0}")]
    Server(String),
    /// The server could not prove it knows the password.
    #[error("server signature does not match")]
    BadServerSignature,
}

enum State {
    Initial,
    FirstSent {
        client_first_bare: String,
    },
    FinalSent {
        server_key: [u8; 32],
        auth_message: Vec<u8>,
    },
    Done,
}

/// The client side of one SCRAM-SHA-256 exchange:
/// [`client_first`](Self::client_first), then
/// [`handle_server_first`](Self::handle_server_first) (returns the
/// client-final-message), then [`verify_server_final`](Self::verify_server_final).
pub struct ScramSha256Client {
    password: Vec<u8>,
    user: String,
    nonce: String,
    state: State,
}

// Holds the password: never print it.
impl fmt::Debug for ScramSha256Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSha256Client").finish_non_exhaustive()
    }
}

impl Drop for ScramSha256Client {
    fn drop(&mut self) {
        self.password.fill(0);
        // Keeps the zeroing from being optimised away as a dead store.
        std::hint::black_box(&self.password);
    }
}

impl ScramSha256Client {
    /// A client with a fresh random nonce. The password is SASLprep-normalised
    /// as libpq does; one that is not UTF-8 or fails SASLprep is used as is.
    pub fn new(password: &[u8]) -> Self {
        let nonce = BASE64.encode(rand::random::<[u8; NONCE_BYTES]>());
        Self::with_nonce(password, &nonce)
    }

    /// A client with a fixed nonce, for tests against known vectors. `nonce`
    /// must be printable ASCII without `,`; never use a fixed nonce in production.
    pub fn with_nonce(password: &[u8], nonce: &str) -> Self {
        Self {
            password: saslprep(password),
            user: String::new(),
            nonce: nonce.to_owned(),
            state: State::Initial,
        }
    }

    /// Sets the user name sent in the client-first-message. PostgreSQL ignores
    /// it (the StartupMessage names the user), so libpq and this client send
    /// an empty one by default.
    pub fn with_user(mut self, user: &str) -> Self {
        self.user = user.replace('=', "=3D").replace(',', "=2C");
        self
    }

    /// The client-first-message, to send in SASLInitialResponse.
    pub fn client_first(&mut self) -> Vec<u8> {
        let client_first_bare = format!("n={},r={}", self.user, self.nonce);
        let message = format!("{GS2_HEADER}{client_first_bare}");
        self.state = State::FirstSent { client_first_bare };
        message.into_bytes()
    }

    /// Checks the server-first-message and returns the client-final-message
    /// carrying the proof, to send in SASLResponse.
    pub fn handle_server_first(&mut self, server_first: &[u8]) -> Result<Vec<u8>, AuthError> {
        let State::FirstSent { client_first_bare } = &self.state else {
            return Err(AuthError::OutOfOrder);
        };
        let text = std::str::from_utf8(server_first)
            .map_err(|_| AuthError::Malformed("server-first-message is not UTF-8"))?;
        let mut attrs = text.split(',');
        let mut next = attrs.next();
        if next.is_some_and(|a| a.starts_with("m=")) {
            return Err(AuthError::UnsupportedExtension);
        }
        let nonce = attr(next, 'r')?;
        next = attrs.next();
        let salt = attr(next, 's')?;
        next = attrs.next();
        let iterations = attr(next, 'i')?;
        // Any further attributes are optional extensions, which RFC 5802 says
        // a client ignores.

        if !nonce.starts_with(&self.nonce) || nonce.len() <= self.nonce.len() {
            return Err(AuthError::NonceMismatch);
        }
        if !nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(AuthError::Malformed("nonce has non-printable characters"));
        }
        let salt = BASE64
            .decode(salt)
            .map_err(|_| AuthError::Malformed("salt is not base64"))?;
        if salt.is_empty() {
            return Err(AuthError::Malformed("salt is empty"));
        }
        let iterations: u64 = iterations
            .parse()
            .map_err(|_| AuthError::Malformed("iteration count is not a number"))?;
        let iterations = u32::try_from(iterations)
            .ok()
            .filter(|i| (1..=MAX_SCRAM_ITERATIONS).contains(i))
            .ok_or(AuthError::IterationCount(iterations))?;

        let salted = hi(&self.password, &salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac(&salted, &[b"Server Key"]);

        let without_proof = format!("c={GS2_HEADER_B64},r={nonce}");
        let auth_message = format!("{client_first_bare},{text},{without_proof}").into_bytes();
        let client_signature = hmac(&stored_key, &[&auth_message]);
        let mut proof = client_key;
        for (p, s) in proof.iter_mut().zip(client_signature) {
            *p ^= s;
        }

        self.state = State::FinalSent {
            server_key,
            auth_message,
        };
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message: the server must prove it knows the
    /// password too. The comparison is constant-time.
    pub fn verify_server_final(&mut self, server_final: &[u8]) -> Result<(), AuthError> {
        let State::FinalSent {
            server_key,
            auth_message,
        } = &self.state
        else {
            return Err(AuthError::OutOfOrder);
        };
        let text = std::str::from_utf8(server_final)
            .map_err(|_| AuthError::Malformed("server-final-message is not UTF-8"))?;
        let first = text.split(',').next();
        if let Some(reason) = first.and_then(|a| a.strip_prefix("e=")) {
            return Err(AuthError::Server(printable(reason)));
        }
        let signature = BASE64
            .decode(attr(first, 'v')?)
            .map_err(|_| AuthError::Malformed("server signature is not base64"))?;
        let mut mac = HmacSha256::new_from_slice(server_key)
            .map_err(|_| AuthError::Malformed("server key"))?;
        mac.update(auth_message);
        mac.verify_slice(&signature)
            .map_err(|_| AuthError::BadServerSignature)?;
        self.state = State::Done;
        Ok(())
    }
}

/// The value of attribute `name` in `part` (`name=value`).
fn attr(part: Option<&str>, name: char) -> Result<&str, AuthError> {
    part.and_then(|p| p.strip_prefix(name))
        .and_then(|p| p.strip_prefix('='))
        .ok_or(AuthError::Malformed("missing or misplaced attribute"))
}

/// Keeps a server-supplied reason short and printable before it reaches a client or log.
fn printable(reason: &str) -> String {
    reason
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(100)
        .collect()
}

/// SASLprep as PostgreSQL applies it: a password that is not UTF-8, or that
/// SASLprep rejects, is used unchanged so such passwords still work.
fn saslprep(password: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(password).map(stringprep::saslprep) {
        Ok(Ok(prepared)) => prepared.into_owned().into_bytes(),
        _ => password.to_vec(),
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length, so this cannot fail; an all-zero result
    // would only make authentication fail, never panic.
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return [0; 32];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one output block: `Hi()` of RFC 5802.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let Ok(keyed) = HmacSha256::new_from_slice(password) else {
        return [0; 32];
    };
    let mut mac = keyed.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = mac.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        // Reusing the keyed state skips re-hashing the key every round.
        let mut mac = keyed.clone();
        mac.update(&u);
        u = mac.finalize().into_bytes().into();
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_FIRST: &[u8] =
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &[u8] = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &[u8] = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_client() -> ScramSha256Client {
        ScramSha256Client::with_nonce(b"pencil", RFC_CLIENT_NONCE).with_user("user")
    }

    #[test]
    fn md5_matches_postgres_formula() {
        assert_eq!(
            md5_password("alice", b"secret", [1, 2, 3, 4]),
            "md598a0412b9c31436fc53776e863350083"
        );
    }

    #[test]
    fn rfc7677_example() {
        let mut c = rfc_client();
        assert_eq!(c.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let client_final = c.handle_server_first(RFC_SERVER_FIRST).unwrap();
        assert_eq!(
            String::from_utf8(client_final).unwrap(),
            std::str::from_utf8(RFC_CLIENT_FINAL).unwrap()
        );
        assert_eq!(c.verify_server_final(RFC_SERVER_FINAL), Ok(()));
        // The exchange is over; nothing more is accepted.
        assert_eq!(
            c.verify_server_final(RFC_SERVER_FINAL),
            Err(AuthError::OutOfOrder)
        );
    }

    #[test]
    fn random_nonce_and_empty_user_by_default() {
        let mut a = ScramSha256Client::new(b"pw");
        let mut b = ScramSha256Client::new(b"pw");
        let first = String::from_utf8(a.client_first()).unwrap();
        assert!(first.starts_with("n,,n=,r="), "{first}");
        assert_eq!(first.len(), "n,,n=,r=".len() + 24);
        assert_ne!(a.client_first(), b.client_first());
    }

    #[test]
    fn user_name_is_escaped() {
        let mut c = ScramSha256Client::with_nonce(b"pw", "abc").with_user("a=b,c");
        assert_eq!(c.client_first(), b"n,,n=a=3Db=2Cc,r=abc");
    }

    #[test]
    fn wrong_server_signature_is_refused() {
        let mut c = rfc_client();
        c.client_first();
        c.handle_server_first(RFC_SERVER_FIRST).unwrap();
        assert_eq!(
            c.verify_server_final(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(AuthError::BadServerSignature)
        );
        // A truncated signature is refused too, not compared as a prefix.
        assert_eq!(
            c.verify_server_final(b"v=6rriTRBi23WpRR/w"),
            Err(AuthError::BadServerSignature)
        );
        assert!(matches!(
            c.verify_server_final(b"v=***"),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            c.verify_server_final(b"x=1"),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn wrong_password_gives_a_different_proof() {
        let mut c = ScramSha256Client::with_nonce(b"pencil2", RFC_CLIENT_NONCE).with_user("user");
        c.client_first();
        assert_ne!(
            c.handle_server_first(RFC_SERVER_FIRST).unwrap(),
            RFC_CLIENT_FINAL
        );
        assert_eq!(
            c.verify_server_final(RFC_SERVER_FINAL),
            Err(AuthError::BadServerSignature)
        );
    }

    #[test]
    fn server_error_is_reported_printable() {
        let mut c = rfc_client();
        c.client_first();
        c.handle_server_first(RFC_SERVER_FIRST).unwrap();
        assert_eq!(
            c.verify_server_final(b"e=invalid-proof\x07"),
            Err(AuthError::Server("invalid-proof".into()))
        );
    }

    fn server_first_error(msg: &[u8]) -> AuthError {
        let mut c = rfc_client();
        c.client_first();
        c.handle_server_first(msg).unwrap_err()
    }

    #[test]
    fn hostile_server_first_messages() {
        let cases: &[(&[u8], AuthError)] = &[
            // Nonce that does not extend ours, or does not extend it at all.
            (
                b"r=XXXX,s=QSXCR+Q6sek8bf92,i=4096",
                AuthError::NonceMismatch,
            ),
            (
                b"r=rOprNGfwEbeRWgbNEkqO,s=QSXCR+Q6sek8bf92,i=4096",
                AuthError::NonceMismatch,
            ),
            // Iteration counts out of bounds.
            (
                b"r=rOprNGfwEbeRWgbNEkqOx,s=QSXCR+Q6sek8bf92,i=0",
                AuthError::IterationCount(0),
            ),
            (
                b"r=rOprNGfwEbeRWgbNEkqOx,s=QSXCR+Q6sek8bf92,i=1000001",
                AuthError::IterationCount(1_000_001),
            ),
            (
                b"r=rOprNGfwEbeRWgbNEkqOx,s=QSXCR+Q6sek8bf92,i=99999999999",
                AuthError::IterationCount(99_999_999_999),
            ),
            (
                b"m=ext,r=rOprNGfwEbeRWgbNEkqOx,s=QSXCR+Q6sek8bf92,i=1",
                AuthError::UnsupportedExtension,
            ),
        ];
        for (msg, expected) in cases {
            assert_eq!(
                &server_first_error(msg),
                expected,
                "{}",
                String::from_utf8_lossy(msg)
            );
        }
        for msg in [
            &b"r=rOprNGfwEbeRWgbNEkqOx,s=not base64!,i=4096"[..],
            b"r=rOprNGfwEbeRWgbNEkqOx,s=,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqOx,s=QSXCR+Q6sek8bf92,i=-1",
            b"r=rOprNGfwEbeRWgbNEkqOx,s=QSXCR+Q6sek8bf92",
            b"s=QSXCR+Q6sek8bf92,r=rOprNGfwEbeRWgbNEkqOx,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqO\x01,s=QSXCR+Q6sek8bf92,i=1",
            b"r=rOprNGfwEbeRWgbNEkqOx,s=QSXCR+Q6sek8bf92,i=1\xff",
            b"",
        ] {
            assert!(
                matches!(server_first_error(msg), AuthError::Malformed(_)),
                "{}",
                String::from_utf8_lossy(msg)
            );
        }
    }

    #[test]
    fn steps_out_of_order() {
        let mut c = rfc_client();
        assert_eq!(
            c.handle_server_first(RFC_SERVER_FIRST),
            Err(AuthError::OutOfOrder)
        );
        assert_eq!(
            c.verify_server_final(RFC_SERVER_FINAL),
            Err(AuthError::OutOfOrder)
        );
        c.client_first();
        assert_eq!(
            c.verify_server_final(RFC_SERVER_FINAL),
            Err(AuthError::OutOfOrder)
        );
    }

    #[test]
    fn password_is_saslprepped_like_libpq() {
        // A soft hyphen maps to nothing and a no-break space to a space.
        let proof = |pw: &[u8]| {
            let mut c = ScramSha256Client::with_nonce(pw, "abc");
            c.client_first();
            c.handle_server_first(b"r=abcdef,s=QSXCR+Q6sek8bf92,i=16")
                .unwrap()
        };
        assert_eq!(proof("I\u{ad}X".as_bytes()), proof(b"IX"));
        assert_eq!(proof("a\u{a0}b".as_bytes()), proof(b"a b"));
        // Not UTF-8, or prohibited by SASLprep: used as is, without error.
        assert_ne!(proof(b"\xff\xfe"), proof(b""));
        assert_ne!(proof(b"a\x07"), proof(b"a"));
    }

    #[test]
    fn debug_hides_the_password() {
        let c = ScramSha256Client::with_nonce(b"hunter2", "n");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
