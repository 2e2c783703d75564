mod common;
use common::*;
use std::time::Duration;

#[test]
fn livez_answers_ok_on_a_free_port() {
    let dir = TempDir::new("smoke");
    let cfg = config_text(dir.path(), "", "");
    let t = Tbot::start(dir, &cfg, &[]);
    let r = t.get("/livez");
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
    let r = t.until("/readyz", Duration::from_secs(5), |r| r.status == 200);
    assert_eq!(r.json()["services"]["heartbeat"]["status"], "healthy");
}
