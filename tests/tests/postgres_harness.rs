//! The PostgreSQL test harness itself: a real server comes up, authenticates with passwords only, keeps
//! committed data across a crash-style restart, and is gone after drop.

use sealroom_tests::postgres::Postgres;

#[test]
fn server_starts_authenticates_survives_restart_and_is_removed() {
    let pg = Postgres::start().expect("start PostgreSQL");
    assert_eq!(pg.psql("postgres", "select 1 + 1").unwrap(), "2");
    pg.psql("postgres", "create table t (v int); insert into t values (42)").unwrap();

    // Password authentication is enforced: a role with a password connects, a wrong password is refused.
    pg.psql("postgres", "create role provider_a login password 'right-password'").unwrap();
    let ok = std::process::Command::new(sealroom_tests::postgres::bin_dir().unwrap().join("psql"))
        .env("PGPASSWORD", "right-password")
        .args(["--no-psqlrc", "-tAc", "select current_user"])
        .arg(pg.url_for("provider_a", "right-password", "postgres"))
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "provider_a");
    let wrong = std::process::Command::new(sealroom_tests::postgres::bin_dir().unwrap().join("psql"))
        .args(["--no-psqlrc", "-tAc", "select 1"])
        .arg(pg.url_for("provider_a", "wrong-password", "postgres"))
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"));

    pg.restart_after_crash().expect("restart");
    assert_eq!(pg.psql("postgres", "select v from t").unwrap(), "42");

    let dir = pg.socket_dir().to_path_buf();
    assert!(dir.join(format!(".s.PGSQL.{}", pg.port())).exists());
    let port = pg.port();
    drop(pg);
    assert!(!dir.exists(), "temporary directory left behind");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "server still listening after drop");
}
