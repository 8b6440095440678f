//! Fuzz target: every message body decoder over the same arbitrary bytes.
#![no_main]

use airlock_wire::{backend, frontend};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let _ = frontend::Query::decode(body);
    let _ = frontend::Parse::decode(body);
    if let Ok(bind) = frontend::Bind::decode(body) {
        assert_eq!(bind.params_text().count(), bind.params.len());
    }
    let _ = frontend::Execute::decode(body);
    let _ = frontend::Describe::decode(body);
    let _ = frontend::Close::decode(body);
    let _ = frontend::PasswordMessage::decode(body);
    let _ = frontend::SaslInitialResponse::decode(body);
    let _ = frontend::SaslResponse::decode(body);
    let _ = frontend::CopyFail::decode(body);
    let _ = frontend::FunctionCall::decode(body);
    let _ = backend::Authentication::decode(body);
    let _ = backend::ParameterStatus::decode(body);
    let _ = backend::BackendKeyData::decode(body);
    let _ = backend::ReadyForQuery::decode(body);
    let _ = backend::RowDescription::decode(body);
    if let Ok(row) = backend::DataRow::decode(body) {
        assert_eq!(row.iter().count(), row.len());
    }
    if let Ok(done) = backend::CommandComplete::decode(body) {
        let _ = done.rows();
    }
    let _ = backend::ErrorResponse::decode(body);
    let _ = backend::CopyResponse::decode(body);
    let _ = backend::NotificationResponse::decode(body);
});
