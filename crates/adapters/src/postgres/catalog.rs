//! The origin of result columns: RowDescription gives a table OID and an
//! attribute number per column; masking rules need `schema.table` and the
//! column's own name (an alias must not hide it). Looked up on a side
//! connection with the target's own credential, once per table, and cached
//! per target. A renamed table keeps its cached name until restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use airlock_wire::backend::{self, DataRow};
use airlock_wire::build;
use airlock_wire::frame::split_frame;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::upstream::{self, PgTarget, UpstreamError};

/// A table's qualified name and its columns by attribute number.
#[derive(Debug, Clone, Default)]
pub struct TableInfo {
    pub name: Arc<str>,
    pub columns: HashMap<i16, Arc<str>>,
}

/// One target's tables by OID. `None` = looked up, not a table.
type Tables = HashMap<u32, Option<Arc<TableInfo>>>;

/// Tables per target.
#[derive(Default)]
pub struct Catalog {
    names: Mutex<HashMap<String, Tables>>,
}

impl Catalog {
    /// The cached name of `oid` on `target`: `Some(None)` when it is known
    /// not to be a table, `None` when it was never looked up.
    pub fn cached(&self, target: &str, oid: u32) -> Option<Option<Arc<TableInfo>>> {
        self.names.lock().ok()?.get(target)?.get(&oid).cloned()
    }

    /// OIDs among `oids` not looked up yet.
    pub fn missing(&self, target: &str, oids: impl IntoIterator<Item = u32>) -> Vec<u32> {
        let Ok(names) = self.names.lock() else {
            return Vec::new();
        };
        let known = names.get(target);
        let mut out: Vec<u32> = oids
            .into_iter()
            .filter(|o| *o != 0 && !known.is_some_and(|k| k.contains_key(o)))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Looks `oids` up on the target and caches the answers.
    pub async fn resolve(
        &self,
        target: &PgTarget,
        oids: &[u32],
        max_message: usize,
    ) -> Result<(), UpstreamError> {
        if oids.is_empty() {
            return Ok(());
        }
        let mut up = upstream::connect(target, &[], max_message).await?;
        let list: Vec<String> = oids.iter().map(u32::to_string).collect();
        let sql = format!(
            "SELECT c.oid::text, n.nspname || '.' || c.relname, a.attnum::text, a.attname \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE c.oid IN ({})",
            list.join(",")
        );
        let mut out = BytesMut::new();
        build::query(&mut out, &sql);
        let io = |e: std::io::Error| UpstreamError::Unreachable(e.kind().to_string());
        up.stream.write_all(&out).await.map_err(io)?;
        up.stream.flush().await.map_err(io)?;
        let mut found: HashMap<u32, TableInfo> = HashMap::new();
        let mut buf = up.leftover;
        loop {
            let frame = match split_frame(&mut buf, max_message)
                .map_err(|e| UpstreamError::Protocol(e.to_string()))?
            {
                Some(f) => f,
                None => {
                    if up.stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                        return Err(UpstreamError::Unreachable(
                            "catalog connection closed".into(),
                        ));
                    }
                    continue;
                }
            };
            match frame.tag {
                backend::tag::DATA_ROW => {
                    let row = DataRow::decode(frame.body())
                        .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                    let text = |c: Option<Option<&[u8]>>| {
                        c.flatten().map(|b| String::from_utf8_lossy(b).into_owned())
                    };
                    let mut cells = row.iter();
                    let (oid, table, attnum, attname) = (
                        text(cells.next()),
                        text(cells.next()),
                        text(cells.next()),
                        text(cells.next()),
                    );
                    if let (Some(oid), Some(table)) =
                        (oid.and_then(|o| o.parse::<u32>().ok()), table)
                    {
                        let info = found.entry(oid).or_insert_with(|| TableInfo {
                            name: Arc::from(table.to_lowercase()),
                            columns: HashMap::new(),
                        });
                        if let (Some(n), Some(name)) =
                            (attnum.and_then(|a| a.parse::<i16>().ok()), attname)
                        {
                            info.columns.insert(n, Arc::from(name));
                        }
                    }
                }
                backend::tag::ERROR_RESPONSE => {
                    return Err(UpstreamError::Protocol("catalog lookup failed".into()));
                }
                backend::tag::READY_FOR_QUERY => break,
                _ => {}
            }
        }
        out.clear();
        build::terminate(&mut out);
        let _ = up.stream.write_all(&out).await;
        if let Ok(mut names) = self.names.lock() {
            let entry = names.entry(target.name.clone()).or_default();
            for oid in oids {
                entry.insert(*oid, found.remove(oid).map(Arc::new));
            }
        }
        Ok(())
    }
}
