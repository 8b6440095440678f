//! Signed JSON webhooks: the event as JSON, `X-Airlock-Event` naming it,
//! `X-Airlock-Delivery` (the same on every retry, so receivers can drop
//! duplicates) and `X-Airlock-Signature: sha256=<hex HMAC-SHA256 of the
//! exact body>` keyed with the configured secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use super::DeliveryError;
use crate::approvals::ApprovalEvent;

pub const SIGNATURE_HEADER: &str = "X-Airlock-Signature";
pub const EVENT_HEADER: &str = "X-Airlock-Event";
pub const DELIVERY_HEADER: &str = "X-Airlock-Delivery";

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a `sha256=<hex>` signature in constant time; for receivers
/// written in Rust, and the tests.
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hexed) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hexed) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// The JSON body sent for `event`.
pub fn payload(event: &ApprovalEvent, link: &str, delivery: Uuid) -> Vec<u8> {
    let value = serde_json::json!({
        "delivery": delivery,
        "event": event.event,
        "at_us": event.at_us,
        "approval_url": link,
        "request": event.request,
        "decision": event.decision,
        "by": event.by,
    });
    // Serialising a `Value` cannot fail.
    serde_json::to_vec(&value).unwrap_or_default()
}

/// One POST. Network errors, 5xx and 429 are worth retrying; other
/// refusals are not.
pub async fn send(
    http: &reqwest::Client,
    url: &str,
    secret: &[u8],
    event: &str,
    delivery: Uuid,
    body: Vec<u8>,
) -> Result<u16, DeliveryError> {
    let sig = signature(secret, &body);
    let resp = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(EVENT_HEADER, event)
        .header(DELIVERY_HEADER, delivery.hyphenated().to_string())
        .header(SIGNATURE_HEADER, sig)
        .body(body)
        .send()
        .await
        .map_err(|e| request_error(&e))?;
    status_result(resp.status())
}

/// A request that got no answer: worth retrying, unless the receiver's
/// certificate is not trusted (that will not change by trying again).
pub(super) fn request_error(e: &reqwest::Error) -> DeliveryError {
    DeliveryError {
        status: None,
        message: describe(e),
        retry: !super::tls::is_untrusted_certificate(e),
    }
}

pub(super) fn status_result(status: reqwest::StatusCode) -> Result<u16, DeliveryError> {
    let code = status.as_u16();
    if status.is_success() {
        Ok(code)
    } else {
        Err(DeliveryError {
            status: Some(code),
            message: format!("the receiver answered {status}"),
            retry: status.is_server_error() || code == 429,
        })
    }
}

/// The innermost cause; reqwest's own message repeats the URL, which for
/// Slack is a secret.
pub(super) fn describe(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        format!("cannot connect: {cause}")
    } else {
        format!("request failed: {cause}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_does_not() {
        // RFC 4231 test case 2.
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &sig));
        assert!(!verify(b"Jefe", b"what do ya want for nothing!", &sig));
        assert!(!verify(b"other", b"what do ya want for nothing?", &sig));
        assert!(!verify(b"Jefe", b"x", "md5=00"));
    }
}
