use super::*;
use crate::ratelimit::policy::Period;

#[test]
fn window_keys_are_hash_tagged_per_client() {
    let mut keys = WindowKeys::new("portcullis:rl:orders", "ip:192.0.2.1");
    assert_eq!(
        keys.window(60 * SECOND, 28_333_334),
        b"{portcullis:rl:orders:ip:192.0.2.1}:60000000:28333334"
    );
    assert_eq!(
        keys.window(60 * SECOND, 28_333_333),
        b"{portcullis:rl:orders:ip:192.0.2.1}:60000000:28333333"
    );
    assert_eq!(keys.window(SECOND, 0), b"{portcullis:rl:orders:ip:192.0.2.1}:1000000:0");
    assert_eq!(
        keys.window(u64::MAX, u64::MAX),
        format!("{{portcullis:rl:orders:ip:192.0.2.1}}:{}:{}", u64::MAX, u64::MAX).as_bytes()
    );
}

#[test]
fn the_clock_follows_a_reading_and_one_caller_renews_it() {
    let clock = RedisClock::new();
    assert_eq!(clock.now(), None, "no time before the first reading");
    // Read at Redis time 1,700,000,000 s during a round trip from local 1,000 to 3,000 µs.
    clock.calibrate(1_000, 3_000, 1_700_000_000 * SECOND);
    let before = clock.local();
    let (now, renew) = clock.now().unwrap();
    let after = clock.local();
    assert!(!renew, "a fresh reading is not renewed");
    // Redis time at local 2,000 µs (the midpoint), moved on by the local clock since.
    assert!(now >= 1_700_000_000 * SECOND + before - 2_000);
    assert!(now <= 1_700_000_000 * SECOND + after - 2_000);
    // Ten seconds later exactly one caller is told to read again.
    let later = clock.read_at.load(Ordering::Acquire) + RECALIBRATE_AFTER;
    assert!(clock.claim_reading(later));
    assert!(!clock.claim_reading(later));
    assert!(!clock.claim_reading(later + SECOND));
}

/// A `redis-server` of the test's own on a free loopback port (`None`: not installed, unless
/// `PORTCULLIS_REQUIRE_REDIS=1`), killed by pid on drop.
struct Server(std::process::Child, u16);

impl Server {
    async fn start() -> Option<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn();
        let Ok(child) = child else {
            assert!(std::env::var("PORTCULLIS_REQUIRE_REDIS").as_deref() != Ok("1"), "no redis-server");
            // Past the harness's capture, so the skip shows in the run's output.
            let test = std::thread::current().name().unwrap_or("a test").to_owned();
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr().lock(),
                format_args!("SKIPPED {test}: redis-server not found\n"),
            );
            return None;
        };
        let server = Server(child, port);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Some(server);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not come up");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Ten seconds after its last reading, one decision carries `TIME` in its own pipeline
/// (no extra round trip) and the store's clock follows Redis again.
#[tokio::test]
async fn a_stale_reading_is_renewed_by_a_decision() {
    let Some(server) = Server::start().await else { return };
    let mut store = RedisStore::new(&format!("redis://127.0.0.1:{}/0", server.1), "t").unwrap();
    // A store that has lived for a minute, so its readings can be ten seconds old.
    store.clock.origin = Instant::now().checked_sub(Duration::from_secs(60)).unwrap();
    let store = Arc::new(store);
    let policy =
        Arc::new(Policy::Windows(vec![(Period::Minute, WindowLimit::sliding(100, Period::Minute.micros()))]));
    let decide = || async {
        let Decided::Pending(pending) = store.decide("k", &policy) else { panic!("not pending") };
        pending.await.unwrap()
    };
    decide().await; // connects, reads TIME
    // The reading is now stale, and the local clock drifted five seconds ahead of Redis.
    store.clock.read_at.store(0, Ordering::Release);
    store.clock.at_origin.fetch_add(5 * SECOND, Ordering::AcqRel);
    let mut conn = store.connection().await.unwrap();
    let redis_now = |(secs, micros): (u64, u64)| secs * SECOND + micros;
    let before = redis_now(redis::cmd("TIME").query_async(&mut conn).await.unwrap());
    let verdict = decide().await;
    assert!(verdict.now >= before + 4 * SECOND, "decided on the drifted clock, its reading went along");
    let after = redis_now(redis::cmd("TIME").query_async(&mut conn).await.unwrap());
    let (now, renew) = store.clock.now().unwrap();
    assert!(!renew, "the reading is fresh again");
    assert!(now.abs_diff(after) < 50_000, "the clock follows Redis again: {now} vs {after}");
}
