//! Webhook policy: when a job ends (done, failed, cancelled) the job JSON is POSTed to the
//! `callback_url` its submitter gave, signed with HMAC-SHA256 when `callbacks.secret` is set so
//! the receiver can tell it came from us. This module says what a delivery carries; the
//! delivery itself (HTTP, retries) is `backends::CallbackHook`.
//!
//! Headers of a delivery:
//! - `Content-Type: application/json`, body = the job record (as `GET /v1/jobs/{id}` has it
//!   in `job`, i.e. the [`Job`](crate::Job) serialized);
//! - `X-Msaas-Event: done | failed | cancelled`;
//! - `X-Msaas-Job-Id: <id>`;
//! - `X-Msaas-Delivery-Attempt: <n>` (1-based);
//! - `X-Msaas-Signature: sha256=<lowercase hex HMAC-SHA256(secret, body)>` when a secret is set;
//! - `traceparent` of the current trace, when tracing is on.

use hmac::{KeyInit, Mac};
use sha2::Sha256;

use crate::traits::EventKind;

/// Header carrying the HMAC of the body.
pub const SIGNATURE_HEADER: &str = "X-Msaas-Signature";
/// Header naming the terminal event (`done`, `failed`, `cancelled`).
pub const EVENT_HEADER: &str = "X-Msaas-Event";
pub const JOB_ID_HEADER: &str = "X-Msaas-Job-Id";
pub const ATTEMPT_HEADER: &str = "X-Msaas-Delivery-Attempt";

/// `sha256=<hex>`: the value of [`SIGNATURE_HEADER`] for `body` signed with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length (long ones are hashed first), so this cannot fail.
    let mut mac = match <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The event name a webhook is sent for, if `kind` ends a job.
pub fn terminal_event_name(kind: EventKind) -> Option<&'static str> {
    match kind {
        EventKind::Done => Some("done"),
        EventKind::Failed => Some("failed"),
        EventKind::Cancelled => Some("cancelled"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_the_rfc_4231_hmac() {
        // RFC 4231 test case 2.
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
