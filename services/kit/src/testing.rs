//! Test support: a fresh, randomly named PostgreSQL database per test (from
//! `TEST_DATABASE_URL`) and a Redis URL plus unique key prefix (from
//! `TEST_REDIS_URL`). Both panic with a clear message when the variable is
//! unset, so a test never passes silently without its dependency.

use sqlx::{Connection, Executor, PgConnection};

/// A throw-away database; dropped (`DROP DATABASE ... WITH (FORCE)`) when the
/// value is dropped, or explicitly with [`TestDb::drop_db`].
pub struct TestDb {
    /// URL of the new database.
    pub url: String,
    /// Its name (`test_<32 hex>`).
    pub name: String,
    admin_url: String,
    dropped: bool,
}

/// `TEST_DATABASE_URL`, or a panic explaining it is required.
pub fn test_database_url() -> String {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "TEST_DATABASE_URL is not set: integration tests need a PostgreSQL superuser URL, \
             e.g. TEST_DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/postgres"
        ),
    }
}

/// `TEST_REDIS_URL`, or a panic explaining it is required.
pub fn test_redis_url() -> String {
    match std::env::var("TEST_REDIS_URL") {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "TEST_REDIS_URL is not set: integration tests need Redis, \
             e.g. TEST_REDIS_URL=redis://127.0.0.1:6379"
        ),
    }
}

/// A unique Redis key prefix for one test (`test:<uuid>:`).
pub fn redis_prefix() -> String {
    format!("test:{}:", uuid::Uuid::new_v4().simple())
}

/// Replace the database name (path) of a postgres URL.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

impl TestDb {
    /// Create a fresh database on the `TEST_DATABASE_URL` server.
    pub async fn new() -> Self {
        let admin_url = test_database_url();
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to TEST_DATABASE_URL: {e}"));
        conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let _ = conn.close().await;
        TestDb {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
            dropped: false,
        }
    }

    /// Drop the database now (terminating remaining connections).
    pub async fn drop_db(mut self) {
        self.dropped = true;
        drop_database(&self.admin_url, &self.name).await;
    }
}

async fn drop_database(admin_url: &str, name: &str) {
    if let Ok(mut conn) = PgConnection::connect(admin_url).await {
        let _ = conn
            .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
            .await;
        let _ = conn.close().await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a separate thread with
        // its own runtime so we can block on the async DROP DATABASE.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(drop_database(&admin, &name));
            }
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:5432/postgres", "t1"),
            "postgres://u:p@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/postgres?sslmode=disable", "t1"),
            "postgres://u:p@h/t1?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "t1"),
            "postgres://h:5432/t1"
        );
    }
}
