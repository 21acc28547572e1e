//! The SQL store shared by the backends: one [`Db`] interface over a
//! connection or transaction of SQLite or PostgreSQL, and the store's
//! queries, projections and writer written once against it. A backend
//! provides its connections, its schema migrations and its dialect.

pub(crate) mod approvals;
pub(crate) mod budgets;
pub(crate) mod identity;
pub(crate) mod nodes;
pub(crate) mod read;
mod store;
pub(crate) mod usage;
pub(crate) mod writer;

#[cfg(test)]
pub(crate) mod tests;

use crate::StoreError;

pub(crate) use store::Listen;
pub use store::SqlStore;

/// Which SQL the connection speaks, where the backends differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A value bound to a statement parameter or read from a column.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Val::Text(v.to_owned())
    }
}

impl From<String> for Val {
    fn from(v: String) -> Self {
        Val::Text(v)
    }
}

impl From<&String> for Val {
    fn from(v: &String) -> Self {
        Val::Text(v.clone())
    }
}

impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Val::Int(v)
    }
}

impl From<u32> for Val {
    fn from(v: u32) -> Self {
        Val::Int(v.into())
    }
}

impl From<u64> for Val {
    fn from(v: u64) -> Self {
        Val::Int(v as i64)
    }
}

impl From<usize> for Val {
    fn from(v: usize) -> Self {
        Val::Int(v as i64)
    }
}

impl From<bool> for Val {
    fn from(v: bool) -> Self {
        Val::Int(v.into())
    }
}

impl From<f64> for Val {
    fn from(v: f64) -> Self {
        Val::Real(v)
    }
}

impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Self {
        v.map_or(Val::Null, Into::into)
    }
}

/// Statement arguments: `args![a, b, …]`.
macro_rules! args {
    ($($v:expr),* $(,)?) => { &[$($crate::sql::Val::from($v)),*][..] };
}
pub(crate) use args;

/// One result row.
#[derive(Debug)]
pub struct Row(pub Vec<Val>);

impl Row {
    fn at(&self, i: usize) -> Result<&Val, StoreError> {
        self.0.get(i).ok_or_else(|| StoreError::Database(format!("no column {i}")))
    }

    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.at(i)? {
            Val::Null => Ok(None),
            Val::Int(v) => Ok(Some(*v)),
            other => Err(StoreError::Corrupt(format!("column {i}: expected an integer, found {other:?}"))),
        }
    }

    pub fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.opt_int(i)?.ok_or_else(|| StoreError::Corrupt(format!("column {i} is null")))
    }

    pub fn u32(&self, i: usize) -> Result<u32, StoreError> {
        u32::try_from(self.int(i)?).map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
    }

    pub fn opt_real(&self, i: usize) -> Result<Option<f64>, StoreError> {
        match self.at(i)? {
            Val::Null => Ok(None),
            Val::Real(v) => Ok(Some(*v)),
            Val::Int(v) => Ok(Some(*v as f64)),
            other => Err(StoreError::Corrupt(format!("column {i}: expected a number, found {other:?}"))),
        }
    }

    pub fn real(&self, i: usize) -> Result<f64, StoreError> {
        self.opt_real(i)?.ok_or_else(|| StoreError::Corrupt(format!("column {i} is null")))
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.at(i)? {
            Val::Null => Ok(None),
            Val::Text(v) => Ok(Some(v.clone())),
            other => Err(StoreError::Corrupt(format!("column {i}: expected text, found {other:?}"))),
        }
    }

    pub fn text(&self, i: usize) -> Result<String, StoreError> {
        self.opt_text(i)?.ok_or_else(|| StoreError::Corrupt(format!("column {i} is null")))
    }
}

/// A connection or transaction of either backend. SQL is written once,
/// with `?1`-style parameters; integers are 64-bit, reals double.
pub trait Db {
    fn dialect(&self) -> Dialect;
    /// Runs a statement; answers the rows it changed.
    fn exec(&self, sql: &str, args: &[Val]) -> Result<u64, StoreError>;
    /// Runs a query; answers its rows.
    fn rows(&self, sql: &str, args: &[Val]) -> Result<Vec<Row>, StoreError>;
    /// Runs statements without parameters (DDL, savepoints).
    fn batch(&self, sql: &str) -> Result<(), StoreError>;

    /// The first row of a query, if any.
    fn row(&self, sql: &str, args: &[Val]) -> Result<Option<Row>, StoreError> {
        Ok(self.rows(sql, args)?.into_iter().next())
    }

    /// The first column of the first row, as text, if any.
    fn text(&self, sql: &str, args: &[Val]) -> Result<Option<String>, StoreError> {
        self.row(sql, args)?.map(|r| r.text(0)).transpose()
    }

    /// ` FOR UPDATE` where row locks exist: a read of a row the
    /// transaction is about to change, so that writers on other nodes wait.
    fn for_update(&self) -> &'static str {
        match self.dialect() {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }
}

/// Decodes JSON stored as text.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// Encodes a value as JSON text.
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}
