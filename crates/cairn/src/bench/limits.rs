//! The limit every figure is held against, measured in the same run: the rate at
//! which the backend's storage can make one write durable.
//!
//! - `sqlite:` — the disk's fsync rate in the database's directory (a
//!   write + `fdatasync` loop on a scratch file): a durable commit cannot be
//!   acknowledged faster than the disk flushes.
//! - `postgres://` — the server's single-row commit rate: one connection, a loop
//!   of autocommit single-row `INSERT`s into a scratch table. The table is a
//!   regular one (dropped afterwards), not `TEMP`: PostgreSQL does not write WAL
//!   for temporary tables and so does not flush at their commit.
//! - `memory` — none ("n/a").

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::stats;

/// Durable writes per probe.
const PROBE_WRITES: usize = 200;
/// Probes per backend; the limit is their median.
const PROBES: usize = 3;

/// A measured commit-rate limit.
#[derive(Clone, Debug, Serialize)]
pub struct Limit {
    /// What was measured.
    pub what: String,
    /// Durable commits per second (median of the probes).
    pub rate_per_s: f64,
    /// Each probe's rate.
    pub probes: Vec<f64>,
    /// Anything that changes how to read the figure (e.g. `synchronous_commit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Limit {
    fn from_probes(what: &str, probes: Vec<f64>, note: Option<String>) -> Self {
        Self {
            what: what.to_string(),
            rate_per_s: stats::median(&probes),
            probes,
            note,
        }
    }

    /// How long one durable commit takes at this rate, in milliseconds.
    pub fn commit_ms(&self) -> f64 {
        1000.0 / self.rate_per_s
    }
}

/// The disk's time for one durable write after each idle gap of `gaps`, in
/// milliseconds: a 4 KiB overwrite (one WAL frame's page) and `fdatasync`,
/// after sleeping. A disk that has been idle flushes more slowly than one kept
/// busy, so a latency measured after idle gaps (the `await` samples) has this,
/// not [`fsync_rate`]'s back-to-back commit, as its floor.
pub fn idle_fsync_ms(dir: &Path, gaps: &[std::time::Duration]) -> Result<Vec<f64>, String> {
    use std::os::unix::fs::FileExt;
    let path = dir.join(format!(".cairn-bench-idle-probe-{}", std::process::id()));
    let result = (|| {
        let f = std::fs::File::create(&path)?;
        let page = [7u8; 4096];
        f.write_all_at(&page, 0)?;
        f.sync_all()?;
        let mut ms = Vec::with_capacity(gaps.len());
        for (i, gap) in gaps.iter().enumerate() {
            std::thread::sleep(*gap);
            let t = Instant::now();
            f.write_all_at(&[i as u8; 4096], 0)?;
            f.sync_data()?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        Ok::<_, std::io::Error>(ms)
    })();
    let _ = std::fs::remove_file(&path);
    result.map_err(|e| format!("idle fsync probe in `{}`: {e}", dir.display()))
}

/// The disk's fsync rate in `dir`: `PROBES` loops of `PROBE_WRITES` 64-byte
/// writes each followed by `fdatasync`.
pub fn fsync_rate(dir: &Path) -> Result<Limit, String> {
    let path = dir.join(format!(".cairn-bench-fsync-probe-{}", std::process::id()));
    let result = (|| {
        let mut probes = Vec::with_capacity(PROBES);
        for _ in 0..PROBES {
            let mut f = std::fs::File::create(&path)?;
            let t = Instant::now();
            for i in 0..PROBE_WRITES {
                f.write_all(&[i as u8; 64])?;
                f.sync_data()?;
            }
            probes.push(PROBE_WRITES as f64 / t.elapsed().as_secs_f64());
        }
        Ok::<_, std::io::Error>(probes)
    })();
    let _ = std::fs::remove_file(&path);
    let probes = result.map_err(|e| format!("fsync probe in `{}`: {e}", dir.display()))?;
    Ok(Limit::from_probes(
        "disk fsync rate (write + fdatasync, one file)",
        probes,
        None,
    ))
}

/// The PostgreSQL server's single-row autocommit rate from one connection.
pub async fn postgres_commit_rate(url: &str) -> Result<Limit, String> {
    let redacted = redact_url(url);
    let url = client_url(url);
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("commit-rate probe: cannot connect to `{redacted}`: {e}"))?;
    let conn_task = tokio::spawn(connection);
    let table = format!("cairn_bench_commit_probe_{}", std::process::id());
    let result = async {
        let sync = client
            .query_one("SHOW synchronous_commit", &[])
            .await
            .map(|row| row.get::<_, String>(0))
            .unwrap_or_else(|_| "unknown".into());
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)"
            ))
            .await?;
        let insert = client
            .prepare(&format!("INSERT INTO {table} (id, v) VALUES ($1, $2)"))
            .await?;
        let mut probes = Vec::with_capacity(PROBES);
        let mut next: i64 = 0;
        for _ in 0..PROBES {
            let t = Instant::now();
            for _ in 0..PROBE_WRITES {
                next += 1;
                client.execute(&insert, &[&next, &next]).await?;
            }
            probes.push(PROBE_WRITES as f64 / t.elapsed().as_secs_f64());
        }
        Ok::<_, tokio_postgres::Error>((probes, sync))
    }
    .await;
    let _ = client.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await;
    drop(client);
    let _ = conn_task.await;
    let (probes, sync) = result.map_err(|e| format!("commit-rate probe on `{redacted}`: {e}"))?;
    let note = (sync != "on").then(|| format!("synchronous_commit = {sync}: commits may not wait for a flush"));
    Ok(Limit::from_probes(
        "server single-row commit rate (autocommit INSERT, one connection)",
        probes,
        note,
    ))
}

/// The URL with any password replaced by `***`, under every reading the
/// server's own log hides ([`cairn_postgres::redact`]).
pub fn redact_url(url: &str) -> String {
    cairn_postgres::redact(url)
}

/// `text` with `url` and its password (if any) redacted wherever they appear:
/// backend errors may quote the URL they were given.
pub fn redact_in(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &redact_url(url));
    for secret in cairn_postgres::secrets(url).into_iter().filter(|p| p.len() >= 3) {
        out = out.replace(secret, "***");
    }
    out
}

/// A cairn PostgreSQL URL without cairn's own parameters (`schema`,
/// `write_lanes`, ...), as a plain PostgreSQL client accepts it.
fn client_url(url: &str) -> String {
    cairn_postgres::PostgresOptions::new(url, std::sync::Arc::new(cairn_core::SystemClock)).url
}

/// Run `sql` against the server a (cairn) PostgreSQL URL names.
async fn postgres_execute(url: &str, sql: &str) -> Result<(), String> {
    let (client, connection) = tokio_postgres::connect(&client_url(url), tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect to `{}`: {e}", redact_url(url)))?;
    let task = tokio::spawn(connection);
    let result = client.batch_execute(sql).await.map_err(|e| e.to_string());
    drop(client);
    let _ = task.await;
    result
}

/// Bring the scale scenario's tables to a steady state: the vacuum and analyze
/// that autovacuum runs on a live server, which a just-filled table has not had yet.
pub async fn postgres_settle(url: &str) -> Result<(), String> {
    let schema = cairn_postgres::split_schema(url).1.unwrap_or_else(|| "cairn".into());
    // One statement per call: VACUUM cannot run inside a multi-statement block.
    for table in ["processes", "grants"] {
        postgres_execute(url, &format!("VACUUM (ANALYZE) \"{schema}\".{table}"))
            .await
            .map_err(|e| format!("vacuum {table}: {e}"))?;
    }
    Ok(())
}

/// Drop a scratch schema the bench created.
pub async fn postgres_drop_schema(url: &str, schema: &str) -> Result<(), String> {
    postgres_execute(url, &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://bob:s3cret@db:5432/cairn"),
            "postgres://bob:***@db:5432/cairn"
        );
        assert_eq!(redact_url("postgres://bob@db/cairn"), "postgres://bob@db/cairn");
        assert_eq!(
            redact_url("postgresql://db/cairn?user=bob&password=x&sslmode=disable"),
            "postgresql://db/cairn?user=bob&password=***&sslmode=disable"
        );
        assert_eq!(redact_url("sqlite:/tmp/a.db"), "sqlite:/tmp/a.db");
        assert_eq!(redact_url("postgres://a:b@c@h/d"), "postgres://a:***@h/d");
        // A password holding `/` or `?` unencoded, as the client reads it.
        for url in [
            "postgres://bob:pa/zq@db/c",
            "postgres://bob:pa?zq@db/c",
            "postgres://h/db?password=x@zq",
        ] {
            assert!(!redact_url(url).contains("zq"), "{url} -> {}", redact_url(url));
            let said = redact_in(&format!("cannot connect to `{url}`"), url);
            assert!(!said.contains("zq"), "{said}");
        }
        let url = "postgres://bob:s3cret@db/cairn";
        assert_eq!(
            redact_in(&format!("cannot open `{url}`: password s3cret refused"), url),
            "cannot open `postgres://bob:***@db/cairn`: password *** refused"
        );
    }

    #[test]
    fn fsync_probe_measures_a_positive_rate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limit = fsync_rate(dir.path()).expect("probe");
        assert!(limit.rate_per_s > 0.0);
        assert_eq!(limit.probes.len(), PROBES);
        assert!(
            std::fs::read_dir(dir.path()).expect("read dir").next().is_none(),
            "probe file removed"
        );
    }

    #[test]
    fn cairn_parameters_stay_out_of_the_probes_url() {
        assert_eq!(
            client_url("postgres://u@h/db?write_lanes=2&connect_timeout=5&schema=s&max_batch=64"),
            "postgres://u@h/db?connect_timeout=5"
        );
        assert_eq!(client_url("postgres://u@h/db"), "postgres://u@h/db");
    }

    /// Needs the test server like every PostgreSQL test: skipped loudly without
    /// `CAIRN_TEST_POSTGRES_URL`, a failure without it under `CI=true`, and a
    /// failure when the server it names cannot be reached.
    #[cfg_attr(
        cairn_no_postgres,
        ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
    )]
    #[tokio::test]
    async fn postgres_probe_measures_a_positive_rate() {
        let Some(url) = cairn_postgres::testing::test_url() else {
            return;
        };
        let limit = postgres_commit_rate(&url).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(limit.rate_per_s > 0.0);
        assert_eq!(limit.probes.len(), PROBES);
    }
}
