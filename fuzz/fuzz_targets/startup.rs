//! Fuzz target: the untagged startup phase (SSLRequest, CancelRequest, StartupMessage).
#![no_main]

use airlock_wire::{MAX_STARTUP_LEN, StartupMessage, split_startup};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    // A client may pipeline an SSLRequest and then its StartupMessage.
    while let Ok(Some(msg)) = split_startup(&mut buf, MAX_STARTUP_LEN) {
        if let StartupMessage::Startup { params, .. } = &msg {
            for (name, _) in params {
                assert!(!name.is_empty() && !name.contains('\0'));
            }
            let _ = msg.param("user");
        }
    }
    // Also the raw body decoder, past the length field.
    let _ = airlock_wire::startup::decode_startup(data);
});
