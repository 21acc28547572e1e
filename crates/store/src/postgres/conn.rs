//! [`Db`] over PostgreSQL, with the synchronous `postgres` client (the
//! store's connections live on its own threads). Statements are prepared
//! once per connection; `?N` parameters become `$N`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error;

use bytes::BytesMut;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::{Client, GenericClient, Statement};

use crate::sql::{Db, Dialect, Row, Val};
use crate::StoreError;

pub(crate) fn pg(e: postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(d) => StoreError::Database(format!("{} ({})", d.message(), d.code().code())),
        None => StoreError::Database(e.to_string()),
    }
}

impl ToSql for Val {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(v) => match *ty {
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            Val::Real(v) => match *ty {
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            Val::Text(v) => v.as_str().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// `?N` parameters as PostgreSQL's `$N`.
fn numbered(sql: &str) -> String {
    sql.replace('?', "$")
}

fn row(r: &postgres::Row) -> Result<Row, StoreError> {
    let mut out = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let v = match *col.type_() {
            Type::INT8 => r.try_get::<_, Option<i64>>(i).map(|v| v.map(Val::Int)),
            Type::INT4 => r.try_get::<_, Option<i32>>(i).map(|v| v.map(|v| Val::Int(v.into()))),
            Type::INT2 => r.try_get::<_, Option<i16>>(i).map(|v| v.map(|v| Val::Int(v.into()))),
            Type::BOOL => r.try_get::<_, Option<bool>>(i).map(|v| v.map(|v| Val::Int(v.into()))),
            Type::FLOAT8 => r.try_get::<_, Option<f64>>(i).map(|v| v.map(Val::Real)),
            Type::FLOAT4 => r.try_get::<_, Option<f32>>(i).map(|v| v.map(|v| Val::Real(v.into()))),
            Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => r.try_get::<_, Option<String>>(i).map(|v| v.map(Val::Text)),
            Type::VOID => Ok(None),
            ref other => return Err(StoreError::Database(format!("column {i} has type {other}, which the store does not read"))),
        };
        out.push(v.map_err(pg)?.unwrap_or(Val::Null));
    }
    Ok(Row(out))
}

/// Prepared statements of one connection, by their `?N` text.
#[derive(Default)]
pub(crate) struct Statements(RefCell<HashMap<String, Statement>>);

impl Statements {
    fn get(&self, client: &mut impl GenericClient, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.0.borrow().get(sql) {
            return Ok(s.clone());
        }
        let s = client.prepare(&numbered(sql)).map_err(pg)?;
        self.0.borrow_mut().insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

fn params(args: &[Val]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

fn exec(client: &mut impl GenericClient, cache: &Statements, sql: &str, args: &[Val]) -> Result<u64, StoreError> {
    let stmt = cache.get(client, sql)?;
    client.execute(&stmt, &params(args)).map_err(pg)
}

fn rows(client: &mut impl GenericClient, cache: &Statements, sql: &str, args: &[Val]) -> Result<Vec<Row>, StoreError> {
    let stmt = cache.get(client, sql)?;
    client.query(&stmt, &params(args)).map_err(pg)?.iter().map(row).collect()
}

/// A connection outside any transaction (a reader).
pub(crate) struct PgConn {
    client: RefCell<Option<Client>>,
    cache: Statements,
}

impl PgConn {
    pub fn new(client: Client) -> Self {
        PgConn { client: RefCell::new(Some(client)), cache: Statements::default() }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut client = self.client.borrow_mut();
        f(client.as_mut().ok_or(StoreError::Closed)?)
    }
}

impl Drop for PgConn {
    /// The client owns a runtime, which may not be dropped on an async
    /// thread: it goes on a thread of its own.
    fn drop(&mut self) {
        if let Some(client) = self.client.get_mut().take() {
            let _ = std::thread::Builder::new().name("pg-close".into()).spawn(move || drop(client));
        }
    }
}

impl Db for PgConn {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn exec(&self, sql: &str, args: &[Val]) -> Result<u64, StoreError> {
        self.with(|c| exec(c, &self.cache, sql, args))
    }

    fn rows(&self, sql: &str, args: &[Val]) -> Result<Vec<Row>, StoreError> {
        self.with(|c| rows(c, &self.cache, sql, args))
    }

    fn batch(&self, sql: &str) -> Result<(), StoreError> {
        self.with(|c| c.batch_execute(sql).map_err(pg))
    }
}

/// A transaction of the writer's connection.
pub(crate) struct PgTx<'a> {
    pub tx: RefCell<postgres::Transaction<'a>>,
    pub cache: &'a Statements,
}

impl Db for PgTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn exec(&self, sql: &str, args: &[Val]) -> Result<u64, StoreError> {
        exec(&mut *self.tx.borrow_mut(), self.cache, sql, args)
    }

    fn rows(&self, sql: &str, args: &[Val]) -> Result<Vec<Row>, StoreError> {
        rows(&mut *self.tx.borrow_mut(), self.cache, sql, args)
    }

    fn batch(&self, sql: &str) -> Result<(), StoreError> {
        self.tx.borrow_mut().batch_execute(sql).map_err(pg)
    }
}
