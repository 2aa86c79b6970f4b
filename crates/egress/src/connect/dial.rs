//! Staggered dialing of every address of an answer, as RFC 8305 §5 ("Happy
//! Eyeballs" version 2) describes it: the first attempt starts at once, each
//! next one [`ATTEMPT_DELAY`] after the last one started, or at once when an
//! attempt fails; the first attempt to succeed wins and the others are
//! dropped (their sockets closed); one deadline bounds the whole race, not
//! each attempt. An address that drops SYNs so costs 250 ms, not the connect
//! limit.
//!
//! One race for every kind of attempt: a TCP connect ([`tcp`]: the library's
//! direct and proxy connections, serve's direct dial and forwarded
//! `http://`), or serve's connection to its parent proxy with `CONNECT ip:port`
//! for one checked address.
//!
//! Why not hyper-util's `HttpConnector`: it races the two address families
//! (the other family 300 ms later) but tries the addresses of one family one
//! after another, each with an even share of the connect limit (two IPv4
//! answers, the first dropping SYNs: half the limit lost). Nor the
//! `happy-eyeballs` crate: it resolves names itself (no blocklist on the
//! answer) and dials TCP only, where serve needs the same race for CONNECT
//! attempts through a parent.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

/// RFC 8305 §8's recommended Connection Attempt Delay.
pub(crate) const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Why a race was lost.
#[derive(Debug)]
pub(crate) enum Lost<E> {
    /// Every address was tried and every attempt failed: each address with
    /// its error, in the order the attempts failed (empty only when there
    /// was no address).
    Failed(Vec<(SocketAddr, E)>),
    /// An attempt failed in a way that ends the race (not a fault of its
    /// address: the parent proxy refused the credentials, say).
    Ended(SocketAddr, E),
    /// The deadline passed first.
    TimedOut {
        /// The addresses whose attempts were still waiting, in start order.
        waiting: Vec<SocketAddr>,
        /// The attempts that had failed by then.
        failed: Vec<(SocketAddr, E)>,
    },
}

impl<E> Lost<E> {
    /// The error of the attempt that failed last, if one failed.
    pub(crate) fn last_failure(self) -> Option<(SocketAddr, E)> {
        match self {
            Lost::Failed(mut failed) | Lost::TimedOut { mut failed, .. } => failed.pop(),
            Lost::Ended(addr, e) => Some((addr, e)),
        }
    }
}

/// RFC 8305 §4's order: address families interleaved, starting with the
/// family of the first address; within a family, the answer's order.
pub(crate) fn interleave(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return Vec::new();
    };
    let (mut same, mut other): (Vec<SocketAddr>, Vec<SocketAddr>) =
        addrs.iter().partition(|a| a.is_ipv4() == first.is_ipv4());
    same.reverse();
    other.reverse();
    let mut order = Vec::with_capacity(addrs.len());
    loop {
        match (same.pop(), other.pop()) {
            (None, None) => return order,
            (a, b) => order.extend(a.into_iter().chain(b)),
        }
    }
}

/// Races `attempt` over `addrs` (in that order), staggered, until one
/// succeeds, all fail, an error `ends_race`, or `deadline`. Dropping the
/// returned future drops every attempt.
pub(crate) async fn race<T, E, F, Fut>(
    addrs: &[SocketAddr],
    deadline: Instant,
    mut attempt: F,
    ends_race: impl Fn(&E) -> bool,
) -> Result<(T, SocketAddr), Lost<E>>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut queue = addrs.iter().copied();
    let mut next = queue.next();
    let mut running: Vec<(SocketAddr, Pin<Box<Fut>>)> = Vec::new();
    let mut failed: Vec<(SocketAddr, E)> = Vec::new();
    let mut stagger = Box::pin(sleep_until(Instant::now()));
    let mut limit = Box::pin(sleep_until(deadline));
    // Set when an attempt failed: the next one starts without waiting.
    let mut start_now = true;
    std::future::poll_fn(move |cx| loop {
        // The deadline first: an attempt's own time limits (the parent's
        // reply, say) start later than the race's and end no earlier, but
        // may end in the same timer tick.
        if limit.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(Lost::TimedOut {
                waiting: running.iter().map(|(addr, _)| *addr).collect(),
                failed: std::mem::take(&mut failed),
            }));
        }
        if let Some(addr) = next {
            if start_now || running.is_empty() || stagger.as_mut().poll(cx).is_ready() {
                if let Some((waiting, _)) = running.last() {
                    if !start_now {
                        tracing::debug!(
                            "no connection to {waiting} within {ATTEMPT_DELAY:?}; trying {addr} too"
                        );
                    }
                }
                running.push((addr, Box::pin(attempt(addr))));
                stagger.as_mut().reset(Instant::now() + ATTEMPT_DELAY);
                start_now = false;
                next = queue.next();
                // Polls the new attempt, and the reset timer (which registers it).
                continue;
            }
        }
        let mut i = 0;
        while i < running.len() {
            match running[i].1.as_mut().poll(cx) {
                Poll::Pending => i += 1,
                Poll::Ready(Ok(won)) => return Poll::Ready(Ok((won, running[i].0))),
                Poll::Ready(Err(e)) => {
                    let (addr, _) = running.remove(i);
                    if ends_race(&e) {
                        return Poll::Ready(Err(Lost::Ended(addr, e)));
                    }
                    failed.push((addr, e));
                    start_now = true;
                }
            }
        }
        if next.is_some() && start_now {
            continue;
        }
        if running.is_empty() {
            // Nothing running and nothing left to start.
            return Poll::Ready(Err(Lost::Failed(std::mem::take(&mut failed))));
        }
        return Poll::Pending;
    })
    .await
}

/// TCP to the first of `addrs` that accepts, staggered, TCP_NODELAY set.
pub(crate) async fn tcp(
    addrs: &[SocketAddr],
    deadline: Instant,
) -> Result<(TcpStream, SocketAddr), Lost<io::Error>> {
    race(
        addrs,
        deadline,
        |addr| async move {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!("cannot set TCP_NODELAY on the connection to {addr}: {e}");
                    }
                    Ok(tcp)
                }
                Err(e) => {
                    tracing::debug!("cannot connect to {addr}: {e}; next address, if any");
                    Err(e)
                }
            }
        },
        |_| false,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    fn v4(last: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), 443)
    }

    fn v6(last: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, last)), 443)
    }

    /// What each address does when dialled in a test race.
    #[derive(Clone, Copy)]
    enum Does {
        /// Succeeds after this long.
        Answer(u64),
        /// Fails after this long.
        Fail(u64),
        /// Never finishes.
        Hang,
    }

    /// Counts the attempts alive; each records when it started (ms after `t0`).
    struct Script {
        t0: Instant,
        started: Mutex<Vec<(SocketAddr, u64)>>,
        alive: AtomicUsize,
    }

    struct Alive<'a>(&'a AtomicUsize);

    impl Drop for Alive<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Script {
        fn new() -> Arc<Script> {
            Arc::new(Script {
                t0: Instant::now(),
                started: Mutex::new(Vec::new()),
                alive: AtomicUsize::new(0),
            })
        }

        fn ms(&self) -> u64 {
            self.t0.elapsed().as_millis() as u64
        }

        async fn run(
            &self,
            plan: &[(SocketAddr, Does)],
            limit: u64,
        ) -> Result<(u64, SocketAddr), Lost<String>> {
            let addrs: Vec<SocketAddr> = plan.iter().map(|(a, _)| *a).collect();
            let deadline = self.t0 + Duration::from_millis(limit);
            race(
                &addrs,
                deadline,
                |addr| {
                    let does = plan.iter().find(|(a, _)| *a == addr).unwrap().1;
                    self.started.lock().unwrap().push((addr, self.ms()));
                    self.alive.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let _alive = Alive(&self.alive);
                        match does {
                            Does::Answer(ms) => {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                                Ok(self.ms())
                            }
                            Does::Fail(ms) => {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                                Err(format!("{addr} failed"))
                            }
                            Does::Hang => std::future::pending().await,
                        }
                    }
                },
                |e: &String| e.contains("fatal") || e.contains("127.0.0.9"),
            )
            .await
        }

        fn started(&self) -> Vec<(SocketAddr, u64)> {
            self.started.lock().unwrap().clone()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_first_address_costs_one_attempt_delay() {
        let s = Script::new();
        let won = s
            .run(&[(v4(2), Does::Hang), (v4(1), Does::Answer(5))], 10_000)
            .await
            .unwrap();
        assert_eq!(won, (255, v4(1)));
        assert_eq!(s.started(), [(v4(2), 0), (v4(1), 250)]);
        // The hanging attempt was dropped with the race.
        assert_eq!(s.alive.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_starts_the_next_attempt_at_once() {
        let s = Script::new();
        let won = s
            .run(
                &[
                    (v4(2), Does::Fail(10)),
                    (v4(3), Does::Fail(20)),
                    (v4(1), Does::Answer(5)),
                ],
                10_000,
            )
            .await
            .unwrap();
        assert_eq!(won, (35, v4(1)));
        assert_eq!(s.started(), [(v4(2), 0), (v4(3), 10), (v4(1), 30)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_first_attempt_that_answers_first_still_wins() {
        let s = Script::new();
        let won = s
            .run(
                &[(v4(2), Does::Answer(300)), (v4(1), Does::Answer(400))],
                10_000,
            )
            .await
            .unwrap();
        assert_eq!(won, (300, v4(2)));
        assert_eq!(s.alive.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_the_whole_race() {
        let s = Script::new();
        let lost = s
            .run(
                &[
                    (v4(2), Does::Hang),
                    (v4(3), Does::Fail(100)),
                    (v4(4), Does::Hang),
                ],
                1_000,
            )
            .await
            .unwrap_err();
        assert_eq!(s.ms(), 1_000);
        match lost {
            Lost::TimedOut { waiting, failed } => {
                assert_eq!(waiting, [v4(2), v4(4)]);
                assert_eq!(failed, [(v4(3), "127.0.0.3:443 failed".to_owned())]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.started(), [(v4(2), 0), (v4(3), 250), (v4(4), 350)]);
        assert_eq!(s.alive.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_ending_with_the_deadline_is_a_timeout() {
        // 127.0.0.9's error would end the race; the deadline, due at the
        // same instant, comes first.
        let s = Script::new();
        let lost = s
            .run(&[(v4(9), Does::Fail(1_000))], 1_000)
            .await
            .unwrap_err();
        assert!(
            matches!(&lost, Lost::TimedOut { waiting, failed } if waiting == &[v4(9)] && failed.is_empty()),
            "{lost:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn all_failing_is_every_error_in_order() {
        let s = Script::new();
        let lost = s
            .run(&[(v4(2), Does::Fail(400)), (v4(3), Does::Fail(10))], 10_000)
            .await
            .unwrap_err();
        match lost {
            Lost::Failed(failed) => {
                let order: Vec<SocketAddr> = failed.iter().map(|(a, _)| *a).collect();
                assert_eq!(order, [v4(3), v4(2)]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.ms(), 400);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_that_ends_the_race_ends_it() {
        let s = Script::new();
        let lost = s
            .run(&[(v4(9), Does::Fail(10)), (v4(1), Does::Answer(5))], 10_000)
            .await
            .unwrap_err();
        assert!(
            matches!(lost, Lost::Ended(addr, _) if addr == v4(9)),
            "{lost:?}"
        );
        assert_eq!(s.started(), [(v4(9), 0)]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_address_is_a_failure_without_errors() {
        let s = Script::new();
        let lost = s.run(&[], 1_000).await.unwrap_err();
        assert!(matches!(&lost, Lost::Failed(f) if f.is_empty()), "{lost:?}");
        assert_eq!(s.ms(), 0);
    }

    #[test]
    fn families_are_interleaved_from_the_first_answers_family() {
        assert_eq!(
            interleave(&[v6(1), v6(2), v6(3), v4(1), v4(2)]),
            [v6(1), v4(1), v6(2), v4(2), v6(3)]
        );
        assert_eq!(interleave(&[v4(1), v4(2), v6(1)]), [v4(1), v6(1), v4(2)]);
        assert_eq!(interleave(&[v4(2), v4(1)]), [v4(2), v4(1)]);
        assert!(interleave(&[]).is_empty());
    }

    /// Real sockets: a closed port refuses at once, so the next address is
    /// dialled without waiting for the stagger.
    #[tokio::test]
    async fn tcp_goes_on_to_the_next_address_when_one_refuses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = listener.local_addr().unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let started = Instant::now();
        let (tcp, won) = tcp(&[closed, live], started + Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(won, live);
        assert!(tcp.nodelay().unwrap());
        assert!(started.elapsed() < ATTEMPT_DELAY, "{:?}", started.elapsed());
        match super::tcp(&[closed], Instant::now() + Duration::from_secs(5)).await {
            Err(Lost::Failed(failed)) => {
                assert_eq!(failed.len(), 1);
                assert_eq!(failed[0].1.kind(), io::ErrorKind::ConnectionRefused);
            }
            other => panic!("{other:?}"),
        }
    }
}
