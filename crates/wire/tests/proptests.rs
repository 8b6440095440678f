//! Property tests: splitters and decoders never panic on arbitrary bytes, and
//! builders round-trip through the decoders.

use airlock_wire::backend::{self, DataRow};
use airlock_wire::{MAX_STARTUP_LEN, StartupMessage, WireError, build, frontend, split_frame};
use airlock_wire::{frame_len_hint, split_startup};
use bytes::BytesMut;
use proptest::prelude::*;

/// Runs every body decoder over `body`; each may fail but none may panic.
fn decode_all(body: &[u8]) {
    let _ = frontend::Query::decode(body);
    let _ = frontend::Parse::decode(body);
    let _ = frontend::Bind::decode(body).map(|b| b.params_text().count());
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
    let _ = DataRow::decode(body).map(|r| r.iter().count());
    let _ = backend::CommandComplete::decode(body).map(|c| c.rows());
    let _ = backend::ErrorResponse::decode(body);
    let _ = backend::CopyResponse::decode(body);
    let _ = backend::NotificationResponse::decode(body);
    let _ = airlock_wire::startup::decode_startup(body);
}

fn cell() -> impl Strategy<Value = Option<Vec<u8>>> {
    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))
}

proptest! {
    #[test]
    fn decoders_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        decode_all(&body);
    }

    #[test]
    fn decoders_never_panic_on_count_prefixed_bodies(
        count in any::<i16>(),
        rest in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        // Many messages start with an Int16 count; make those paths likely.
        let mut body = count.to_be_bytes().to_vec();
        body.extend_from_slice(&rest);
        decode_all(&body);
    }

    #[test]
    fn split_frame_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..1024) {
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = frame_len_hint(&buf, max);
        while let Ok(Some(frame)) = split_frame(&mut buf, max) {
            prop_assert!(frame.len() <= max + 1);
            decode_all(frame.body());
        }
    }

    #[test]
    fn split_startup_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = split_startup(&mut buf, MAX_STARTUP_LEN);
    }

    #[test]
    fn split_startup_never_panics_on_v3_packets(rest in proptest::collection::vec(any::<u8>(), 0..128)) {
        let len = i32::try_from(rest.len() + 8).unwrap();
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&196_608i32.to_be_bytes());
        bytes.extend_from_slice(&rest);
        let _ = split_startup(&mut BytesMut::from(&bytes[..]), MAX_STARTUP_LEN);
    }

    /// However the stream is chopped into reads, the same frames come out.
    #[test]
    fn framing_is_independent_of_read_boundaries(
        sqls in proptest::collection::vec("[a-z ]{0,30}", 1..6),
        chunk in 1usize..17,
    ) {
        let mut wire = BytesMut::new();
        for sql in &sqls {
            build::query(&mut wire, sql);
        }
        let mut buf = BytesMut::new();
        let mut seen = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(frame) = split_frame(&mut buf, 1024).unwrap() {
                seen.push(frontend::Query::decode(frame.body()).unwrap().sql.to_owned());
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(seen, sqls);
    }

    #[test]
    fn data_row_round_trip(cells in proptest::collection::vec(cell(), 0..20)) {
        let mut buf = BytesMut::new();
        build::data_row(&mut buf, cells.iter().map(|c| c.as_deref()));
        let frame = split_frame(&mut buf, 1 << 16).unwrap().unwrap();
        let row = DataRow::decode(frame.body()).unwrap();
        prop_assert_eq!(row.len(), cells.len());
        let back: Vec<Option<Vec<u8>>> = row.iter().map(|c| c.map(<[u8]>::to_vec)).collect();
        prop_assert_eq!(back, cells);
    }

    #[test]
    fn bind_round_trip(
        params in proptest::collection::vec(cell(), 0..10),
        binary in any::<bool>(),
        portal in "[a-z0-9_]{0,10}",
    ) {
        let formats = [i16::from(binary)];
        let mut buf = BytesMut::new();
        build::bind(&mut buf, &portal, "stmt", &formats, params.iter().map(|c| c.as_deref()), &[]);
        let frame = split_frame(&mut buf, 1 << 16).unwrap().unwrap();
        let bind = frontend::Bind::decode(frame.body()).unwrap();
        prop_assert_eq!(bind.portal, portal.as_str());
        let back: Vec<Option<Vec<u8>>> = bind.params.iter().map(|c| c.map(<[u8]>::to_vec)).collect();
        prop_assert_eq!(back, params);
    }

    #[test]
    fn startup_round_trip(params in proptest::collection::vec(("[a-z_]{1,12}", "[ -~]{0,20}"), 0..8)) {
        let mut buf = BytesMut::new();
        build::startup_message(&mut buf, params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let msg = split_startup(&mut buf, MAX_STARTUP_LEN).unwrap().unwrap();
        prop_assert_eq!(msg, StartupMessage::Startup { version: 196_608, params });
    }

    #[test]
    fn error_fields_round_trip(fields in proptest::collection::vec((1u8..=255, "[^\\x00]{0,20}"), 0..8)) {
        let mut buf = BytesMut::new();
        build::error_response_fields(&mut buf, fields.iter().map(|(c, v)| (*c, v.as_str())));
        let frame = split_frame(&mut buf, 1 << 16).unwrap().unwrap();
        let decoded = backend::ErrorResponse::decode(frame.body()).unwrap();
        let back: Vec<(u8, String)> = decoded.fields.iter().map(|(c, v)| (*c, (*v).to_owned())).collect();
        prop_assert_eq!(back, fields);
    }
}

#[test]
fn oversized_startup_refused_before_buffering() {
    // Only the length has arrived; it is already refused.
    let mut buf = BytesMut::from(&0x7fff_ffff_i32.to_be_bytes()[..]);
    assert_eq!(
        split_startup(&mut buf, MAX_STARTUP_LEN),
        Err(WireError::TooLarge {
            len: 0x7fff_ffff,
            max: MAX_STARTUP_LEN
        })
    );
}
