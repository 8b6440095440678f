//! Walks one parsed statement: tables read and written, functions called, hidden writes.
//!
//! The walk uses sqlparser's visitor, so every subquery, CTE, join and
//! expression is reached without this module listing them. Two things need
//! care beyond "collect every relation":
//!
//! - Write targets. The statement classifier (and [`Walker::pre_visit_statement`]
//!   for DML, nested or not) marks the `ObjectName` nodes that are written;
//!   a relation node is recognised by its address, so `INSERT INTO t SELECT *
//!   FROM t` reports `t` as both written and read.
//! - CTE scoping. A CTE name is not a table, but only where the CTE is in
//!   scope: in `WITH users AS (SELECT * FROM users) ...` the inner `users` is
//!   the real table. Each CTE body sees the CTEs declared before it (and
//!   itself when `RECURSIVE`); the query body sees all of them; nested
//!   queries inherit. Getting this wrong would let a CTE hide a table from
//!   policy, so the rule errs towards reporting a table.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::ptr;

use sqlparser::ast::{
    Expr, Ident, ObjectName, ObjectNamePart, Query, Select, SetExpr, Statement, TableAlias,
    TableFactor, TableObject, Visitor,
};

use super::SqlDialect;

/// What the walk found.
#[derive(Debug, Default)]
pub(super) struct Facts {
    pub reads: Vec<String>,
    pub writes: Vec<String>,
    pub functions: Vec<String>,
    /// `Some(all had WHERE)` when any UPDATE or DELETE was seen.
    pub has_where: Option<bool>,
    /// An INSERT, UPDATE, DELETE or MERGE appears anywhere (data-modifying CTEs included).
    pub dml: bool,
    /// `SELECT ... INTO` creating or filling a table.
    pub select_into: bool,
    /// `SELECT ... FOR UPDATE/SHARE` row locks.
    pub locking: bool,
}

impl Facts {
    pub(super) fn note_where(&mut self, present: bool) {
        self.has_where = Some(self.has_where.unwrap_or(true) && present);
    }
}

pub(super) struct Walker {
    dialect: SqlDialect,
    /// CTE names visible at the current query, innermost query last.
    scopes: Vec<Vec<String>>,
    /// CTE bodies not yet entered, with the names each one may see.
    cte_bodies: Vec<(*const Query, Vec<String>)>,
    /// Relation nodes already accounted for (write targets, table functions).
    handled: Vec<*const ObjectName>,
    pub(super) facts: Facts,
}

impl Walker {
    pub(super) fn new(dialect: SqlDialect) -> Self {
        Walker {
            dialect,
            scopes: Vec::new(),
            cte_bodies: Vec::new(),
            handled: Vec::new(),
            facts: Facts::default(),
        }
    }

    /// Records `name` as written and keeps the visitor from also counting it as read.
    pub(super) fn write_target(&mut self, name: &ObjectName) {
        self.handled.push(name as *const ObjectName);
        self.facts.writes.push(object_name(name));
    }

    /// Records a read of a relation the visitor does not reach by itself.
    pub(super) fn read_target(&mut self, name: &ObjectName) {
        self.handled.push(name as *const ObjectName);
        self.facts.reads.push(object_name(name));
    }

    fn write_factor(&mut self, factor: &TableFactor) {
        if let TableFactor::Table { name, alias, .. } = factor {
            match only_target(name, alias.as_ref()) {
                Some(table) => {
                    self.handled.push(name as *const ObjectName);
                    self.facts.writes.push(table);
                }
                None => self.write_target(name),
            }
        }
    }

    fn function(&mut self, name: &ObjectName) {
        self.facts.functions.push(function_name(name));
    }

    /// `TABLE t` (and `... UNION TABLE t`) reads `t` without a relation node.
    fn table_statements(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Table(t) => {
                if let Some(table) = &t.table_name {
                    let table = fold_case(table, false);
                    let visible = self.scopes.last().is_some_and(|s| s.contains(&table));
                    match &t.schema_name {
                        Some(schema) => self
                            .facts
                            .reads
                            .push(format!("{}.{table}", fold_case(schema, false))),
                        None if visible => {}
                        None => self.facts.reads.push(table),
                    }
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.table_statements(left);
                self.table_statements(right);
            }
            _ => {}
        }
    }

    pub(super) fn finish(mut self) -> Facts {
        dedup(&mut self.facts.reads);
        dedup(&mut self.facts.writes);
        dedup(&mut self.facts.functions);
        self.facts
    }
}

impl Visitor for Walker {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        let base = match self
            .cte_bodies
            .iter()
            .position(|(body, _)| ptr::eq(*body, query))
        {
            Some(i) => self.cte_bodies.swap_remove(i).1,
            None => self.scopes.last().cloned().unwrap_or_default(),
        };
        let mut visible = base.clone();
        if let Some(with) = &query.with {
            let names: Vec<String> = with
                .cte_tables
                .iter()
                .map(|cte| ident(&cte.alias.name))
                .collect();
            for (i, cte) in with.cte_tables.iter().enumerate() {
                let upto = if with.recursive { i + 1 } else { i };
                let mut sees = base.clone();
                sees.extend(names.iter().take(upto).cloned());
                self.cte_bodies.push((&*cte.query as *const Query, sees));
            }
            visible.extend(names);
        }
        self.scopes.push(visible);
        if !query.locks.is_empty() {
            self.facts.locking = true;
        }
        self.table_statements(&query.body);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.scopes.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        if let Some(into) = &select.into {
            for target in &into.targets {
                match target {
                    // MySQL `SELECT ... INTO @v` fills a session variable, not a table.
                    Expr::Identifier(id)
                        if self.dialect == SqlDialect::MySql && id.value.starts_with('@') => {}
                    Expr::Identifier(id) => {
                        self.facts.select_into = true;
                        self.facts.writes.push(ident(id));
                    }
                    Expr::CompoundIdentifier(parts) => {
                        self.facts.select_into = true;
                        self.facts
                            .writes
                            .push(parts.iter().map(ident).collect::<Vec<_>>().join("."));
                    }
                    // Anything else (an OUTFILE, an expression) is treated as
                    // creating something, the stronger reading.
                    _ => self.facts.select_into = true,
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        if self.handled.iter().any(|h| ptr::eq(*h, relation)) {
            return ControlFlow::Continue(());
        }
        if let [ObjectNamePart::Identifier(single)] = relation.0.as_slice() {
            let name = ident(single);
            if self.scopes.last().is_some_and(|s| s.contains(&name)) {
                return ControlFlow::Continue(());
            }
        }
        self.facts.reads.push(object_name(relation));
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } if !self.handled.iter().any(|h| ptr::eq(*h, name)) => {
                if let Some(table) = only_target(name, alias.as_ref()) {
                    self.handled.push(name as *const ObjectName);
                    self.facts.reads.push(table);
                }
            }
            // `FROM generate_series(1, 3)`: a function call in table position.
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => {
                self.handled.push(name as *const ObjectName);
                self.function(name);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            self.function(&f.name);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        match statement {
            Statement::Insert(insert) => {
                self.facts.dml = true;
                match &insert.table {
                    TableObject::TableName(name) => self.write_target(name),
                    TableObject::TableFunction(f) => {
                        self.facts.writes.push(object_name(&f.name));
                    }
                    // `INSERT INTO (subquery)`: the subquery's tables are
                    // reported as read by the walk; report them written too.
                    other => {
                        let mut inner = Walker::new(self.dialect);
                        let _ = sqlparser::ast::Visit::visit(other, &mut inner);
                        self.facts.writes.extend(inner.facts.reads);
                    }
                }
            }
            Statement::Update(update) => {
                self.facts.dml = true;
                self.facts.note_where(update.selection.is_some());
                self.write_factor(&update.table.relation);
                // MySQL's multi-table UPDATE may assign columns of any joined table.
                if self.dialect == SqlDialect::MySql {
                    for join in &update.table.joins {
                        self.write_factor(&join.relation);
                    }
                }
            }
            Statement::Delete(delete) => {
                self.facts.dml = true;
                self.facts.note_where(delete.selection.is_some());
                if delete.tables.is_empty() {
                    let from = match &delete.from {
                        sqlparser::ast::FromTable::WithFromKeyword(t)
                        | sqlparser::ast::FromTable::WithoutKeyword(t) => t,
                    };
                    for table in from {
                        self.write_factor(&table.relation);
                    }
                } else {
                    // MySQL `DELETE t1, t2 FROM ...` names its targets first.
                    for name in &delete.tables {
                        self.write_target(name);
                    }
                }
            }
            Statement::Merge(merge) => {
                self.facts.dml = true;
                self.write_factor(&merge.table);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// sqlparser reads PostgreSQL's `FROM ONLY t` as table `only` with alias
/// `t`. ONLY is reserved, so an unquoted one-part `only` with an alias is
/// always that keyword, and the table is the alias.
fn only_target(name: &ObjectName, alias: Option<&TableAlias>) -> Option<String> {
    match (name.0.as_slice(), alias) {
        ([ObjectNamePart::Identifier(id)], Some(alias))
            if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("only") =>
        {
            Some(ident(&alias.name))
        }
        _ => None,
    }
}

/// An identifier as policy sees it: folded to lower case unless quoted.
pub(super) fn ident(id: &Ident) -> String {
    fold_case(&id.value, id.quote_style.is_some())
}

fn fold_case(s: &str, quoted: bool) -> String {
    if quoted {
        s.to_string()
    } else {
        s.to_lowercase()
    }
}

/// A (possibly schema-qualified) object name, parts joined by `.`.
pub(super) fn object_name(name: &ObjectName) -> String {
    let mut out = String::new();
    for (i, part) in name.0.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        match part {
            ObjectNamePart::Identifier(id) => out.push_str(&ident(id)),
            other => out.push_str(&other.to_string().to_lowercase()),
        }
    }
    out
}

/// A function's unqualified name, always lower-cased: matching risky
/// functions must not be defeated by quoting (`"PG_READ_FILE"`).
pub(super) fn function_name(name: &ObjectName) -> String {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(id)) => id.value.to_lowercase(),
        Some(other) => other.to_string().to_lowercase(),
        None => String::new(),
    }
}

/// Removes empty and repeated names, keeping first occurrences in order.
pub(super) fn dedup(v: &mut Vec<String>) {
    let mut seen: HashSet<String> = HashSet::with_capacity(v.len());
    v.retain(|s| !s.is_empty() && seen.insert(s.clone()));
}
