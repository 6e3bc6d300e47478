//! A throwaway PostgreSQL cluster for `cargo test` (the Rust twin of
//! `scripts/lib/pg-cluster.js`): `initdb` into a temp dir (as the `postgres` user when
//! running as root), loopback only, a free port, fsync on, password authentication.
//! Dropping it stops the server and removes the directory, also when a test panics.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const PASSWORD: &str = "test-secret-pw";

pub struct TestCluster {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    as_postgres: bool,
}

fn find_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MLOPS_PG_BIN") {
        return PathBuf::from(p);
    }
    let standard = Path::new("/usr/lib/postgresql/15/bin");
    if standard.join("initdb").exists() {
        return standard.to_path_buf();
    }
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut v: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .collect();
        v.sort();
        if let Some(p) = v.pop() {
            return p;
        }
    }
    panic!(
        "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin and MLOPS_PG_BIN); \
         install them with `node scripts/lib/pg-cluster.js --install`"
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl TestCluster {
    fn cmd(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, mut c: Command, what: &str) -> bool {
        let out = c
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        if !out.status.success() {
            eprintln!(
                "{what} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out.status.success()
    }

    pub fn start() -> TestCluster {
        let bin = find_bin();
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!(
            "mlops-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pwfile"), PASSWORD).unwrap();
        let mut c = TestCluster {
            dir,
            port: 0,
            bin,
            as_postgres,
        };
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&c.dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown of the cluster dir to postgres");
        }
        let mut init = c.cmd("initdb");
        init.arg("-D")
            .arg(c.dir.join("data"))
            .args([
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", c.dir.join("pwfile").display()));
        assert!(c.run(init, "initdb"), "initdb");
        for _ in 0..5 {
            c.port = free_port();
            if c.start_server() {
                return c;
            }
        }
        panic!(
            "the test PostgreSQL cluster did not start (see {}/log)",
            c.dir.display()
        );
    }

    pub fn start_server(&self) -> bool {
        let mut ctl = self.cmd("pg_ctl");
        ctl.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=on -c max_connections=100",
                self.port,
                self.dir.display()
            ))
            .arg("start");
        self.run(ctl, "pg_ctl start")
    }

    /// Stops the server (`immediate`: as a crash would; `fast`: a clean shutdown).
    pub fn stop_server(&self, mode: &str) {
        let mut ctl = self.cmd("pg_ctl");
        ctl.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", mode, "-w", "stop"]);
        self.run(ctl, "pg_ctl stop");
    }

    pub fn url(&self) -> String {
        self.url_as("postgres", PASSWORD)
    }

    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// Runs SQL through psql (for setting up faults from outside the store).
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .env("PGPASSWORD", PASSWORD)
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-At",
                "-c",
            ])
            .arg(sql)
            .arg("-p")
            .arg(self.port.to_string())
            .output()
            .expect("psql");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.stop_server("fast");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
