//! The one table of functions whose call makes a statement stronger than its syntax says.
//!
//! `SELECT pg_terminate_backend(42)` parses as a plain query, yet it kills a
//! session; `SELECT nextval('s')` mutates a sequence. A statement that calls a
//! function listed here is raised to at least that function's class. Names are
//! matched lower-case and unqualified (`pg_catalog.PG_READ_FILE` matches
//! `pg_read_file`), so quoting or schema-qualifying a call does not hide it.
//!
//! Functions not listed are assumed to have no side effects. That is a known
//! limit: a user-defined function can do anything, which is why creating one
//! is `ddl` and reviewed where it matters.

use crate::model::ActionClass;

/// One entry: the name, the class a call raises the statement to, and why.
pub struct RiskyFunction {
    pub name: &'static str,
    pub class: ActionClass,
    pub why: &'static str,
}

const fn admin(name: &'static str, why: &'static str) -> RiskyFunction {
    RiskyFunction {
        name,
        class: ActionClass::Admin,
        why,
    }
}

const fn write(name: &'static str, why: &'static str) -> RiskyFunction {
    RiskyFunction {
        name,
        class: ActionClass::Write,
        why,
    }
}

/// Every function with side effects the classifier knows about.
///
/// `pg_sleep` is deliberately absent: it only wastes the caller's own time.
pub const RISKY_FUNCTIONS: &[RiskyFunction] = &[
    // Other sessions and the server process.
    admin("pg_terminate_backend", "kills another session"),
    admin("pg_cancel_backend", "cancels another session's query"),
    admin("pg_reload_conf", "reloads the server configuration"),
    admin("pg_rotate_logfile", "rotates the server log"),
    admin("pg_promote", "promotes a standby"),
    admin("pg_switch_wal", "forces a WAL switch"),
    admin("pg_create_restore_point", "writes a WAL restore point"),
    admin("pg_backup_start", "starts a base backup"),
    admin("pg_backup_stop", "stops a base backup"),
    admin("pg_start_backup", "starts a base backup"),
    admin("pg_stop_backup", "stops a base backup"),
    admin("pg_wal_replay_pause", "pauses recovery"),
    admin("pg_wal_replay_resume", "resumes recovery"),
    admin(
        "pg_create_physical_replication_slot",
        "creates a replication slot",
    ),
    admin(
        "pg_create_logical_replication_slot",
        "creates a replication slot",
    ),
    admin("pg_drop_replication_slot", "drops a replication slot"),
    admin("pg_log_backend_memory_contexts", "signals another backend"),
    admin("pg_stat_reset", "resets server statistics"),
    admin("pg_stat_reset_shared", "resets server statistics"),
    admin("pg_stat_reset_single_table_counters", "resets statistics"),
    admin(
        "pg_stat_reset_single_function_counters",
        "resets statistics",
    ),
    admin("pg_stat_statements_reset", "resets statement statistics"),
    // Settings: `set_config` is `SET` in function form, including `role`.
    admin("set_config", "changes a setting, possibly the session role"),
    // The server's file system.
    admin("pg_read_file", "reads a server file"),
    admin("pg_read_binary_file", "reads a server file"),
    admin("pg_ls_dir", "lists a server directory"),
    admin("pg_ls_logdir", "lists a server directory"),
    admin("pg_ls_waldir", "lists a server directory"),
    admin("pg_ls_tmpdir", "lists a server directory"),
    admin("pg_ls_archive_statusdir", "lists a server directory"),
    admin("pg_stat_file", "inspects a server file"),
    admin("pg_file_write", "writes a server file (adminpack)"),
    admin("pg_file_rename", "renames a server file (adminpack)"),
    admin("pg_file_unlink", "deletes a server file (adminpack)"),
    admin("pg_logdir_ls", "lists the server log directory (adminpack)"),
    admin("lo_import", "reads a server file into a large object"),
    admin("lo_export", "writes a large object to a server file"),
    admin("load_file", "reads a server file (MySQL)"),
    // SQL text the classifier never sees: another database, or a query
    // string executed inside the function.
    admin("dblink", "runs SQL on another server"),
    admin("query_to_xml", "runs SQL given as a string"),
    admin("query_to_xml_and_xmlschema", "runs SQL given as a string"),
    admin("query_to_xmlschema", "runs SQL given as a string"),
    admin("cursor_to_xml", "reads an open cursor"),
    admin("table_to_xml", "reads a table named by a string"),
    admin(
        "table_to_xml_and_xmlschema",
        "reads a table named by a string",
    ),
    admin("schema_to_xml", "reads every table of a schema"),
    admin(
        "schema_to_xml_and_xmlschema",
        "reads every table of a schema",
    ),
    admin("database_to_xml", "reads every table of the database"),
    admin(
        "database_to_xml_and_xmlschema",
        "reads every table of the database",
    ),
    // Sequences and large objects: data changes through a SELECT.
    write("nextval", "advances a sequence"),
    write("setval", "sets a sequence"),
    write("lo_create", "creates a large object"),
    write("lo_creat", "creates a large object"),
    write("lo_unlink", "deletes a large object"),
    write("lo_put", "writes a large object"),
    write("lo_from_bytea", "creates a large object"),
    write("lowrite", "writes a large object"),
    write("lo_truncate", "truncates a large object"),
    write("lo_truncate64", "truncates a large object"),
];

/// How a call to `name` (lower-case, unqualified) classifies, if it matters.
pub fn risky_function(name: &str) -> Option<&'static RiskyFunction> {
    // Every dblink entry point (dblink_exec, dblink_connect_u, dblink_send_query, ...)
    // talks to another server, so the whole family is matched by prefix.
    if name.starts_with("dblink") {
        return RISKY_FUNCTIONS.iter().find(|f| f.name == "dblink");
    }
    RISKY_FUNCTIONS.iter().find(|f| f.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lookups() {
        assert_eq!(
            risky_function("pg_terminate_backend").map(|f| f.class),
            Some(ActionClass::Admin)
        );
        assert_eq!(
            risky_function("dblink_exec").map(|f| f.class),
            Some(ActionClass::Admin)
        );
        assert_eq!(
            risky_function("nextval").map(|f| f.class),
            Some(ActionClass::Write)
        );
        assert!(risky_function("pg_sleep").is_none());
        assert!(risky_function("count").is_none());
    }

    #[test]
    fn names_are_unique_and_lower_case() {
        for (i, f) in RISKY_FUNCTIONS.iter().enumerate() {
            assert_eq!(f.name, f.name.to_ascii_lowercase());
            assert!(
                RISKY_FUNCTIONS[i + 1..].iter().all(|g| g.name != f.name),
                "duplicate {}",
                f.name
            );
        }
    }
}
