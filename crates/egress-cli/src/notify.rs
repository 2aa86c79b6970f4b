//! Telling systemd what serve is doing (`Type=notify` in
//! contrib/egress-serve.service): `READY=1` once every listener is bound, so
//! that `Before=matrix-synapse.service` starts Synapse only when its proxy
//! answers; `RELOADING=1` and `READY=1` around a `SIGHUP` reload; `STOPPING=1`
//! when the drain starts. Outside systemd (`NOTIFY_SOCKET` unset) each is a
//! no-op. The sd-notify crate writes the datagram.

use sd_notify::NotifyState;

/// serve is listening (status: what on).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload starts (systemd 253 and later want the time with it).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The reload is over, with the policy it left in place.
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The drain starts.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

fn send(states: &[NotifyState<'_>]) {
    // false: keep NOTIFY_SOCKET, serve notifies again on reload and stop.
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
    }
}
