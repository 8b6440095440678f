//! Fuzz target: tagged framing over an arbitrary byte stream, decoding every
//! frame it yields by tag, in both directions.
#![no_main]

use airlock_wire::{backend, frame_len_hint, frontend, split_frame};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

/// A small limit so the oversized-length path is reached often.
const MAX_LEN: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let hint = frame_len_hint(&buf, MAX_LEN);
    let mut first = true;
    while let Ok(Some(frame)) = split_frame(&mut buf, MAX_LEN) {
        if first {
            // The hint must agree with the frame actually split.
            assert_eq!(hint, Some(frame.len()));
            first = false;
        }
        assert!(frame.len() <= MAX_LEN + 1);
        assert_eq!(frame.bytes.first(), Some(&frame.tag));
        decode_frontend(frame.tag, frame.body());
        // Tag letters overlap between directions, so try the backend reading too.
        decode_backend(frame.tag, frame.body());
    }
});

fn decode_frontend(t: u8, body: &[u8]) {
    use frontend::tag;
    match t {
        tag::QUERY => {
            let _ = frontend::Query::decode(body);
        }
        tag::PARSE => {
            let _ = frontend::Parse::decode(body);
        }
        tag::BIND => {
            let _ = frontend::Bind::decode(body).map(|b| b.params_text().count());
        }
        tag::EXECUTE => {
            let _ = frontend::Execute::decode(body);
        }
        tag::DESCRIBE => {
            let _ = frontend::Describe::decode(body);
        }
        tag::CLOSE => {
            let _ = frontend::Close::decode(body);
        }
        tag::PASSWORD => {
            let _ = frontend::PasswordMessage::decode(body);
            let _ = frontend::SaslInitialResponse::decode(body);
            let _ = frontend::SaslResponse::decode(body);
        }
        tag::COPY_FAIL => {
            let _ = frontend::CopyFail::decode(body);
        }
        tag::FUNCTION_CALL => {
            let _ = frontend::FunctionCall::decode(body);
        }
        _ => {}
    }
}

fn decode_backend(t: u8, body: &[u8]) {
    use backend::tag;
    match t {
        tag::AUTHENTICATION => {
            let _ = backend::Authentication::decode(body);
        }
        tag::PARAMETER_STATUS => {
            let _ = backend::ParameterStatus::decode(body);
        }
        tag::BACKEND_KEY_DATA => {
            let _ = backend::BackendKeyData::decode(body);
        }
        tag::READY_FOR_QUERY => {
            let _ = backend::ReadyForQuery::decode(body);
        }
        tag::ROW_DESCRIPTION => {
            let _ = backend::RowDescription::decode(body);
        }
        tag::DATA_ROW => {
            if let Ok(row) = backend::DataRow::decode(body) {
                assert_eq!(row.iter().count(), row.len());
            }
        }
        tag::COMMAND_COMPLETE => {
            let _ = backend::CommandComplete::decode(body).map(|c| c.rows());
        }
        tag::ERROR_RESPONSE | tag::NOTICE_RESPONSE => {
            let _ = backend::ErrorResponse::decode(body);
        }
        tag::COPY_IN_RESPONSE | tag::COPY_OUT_RESPONSE | tag::COPY_BOTH_RESPONSE => {
            let _ = backend::CopyResponse::decode(body);
        }
        tag::NOTIFICATION_RESPONSE => {
            let _ = backend::NotificationResponse::decode(body);
        }
        _ => {}
    }
}
