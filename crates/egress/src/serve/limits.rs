//! Concurrency limits: tunnels and forwarded requests in all, and per client
//! address. The per-client map holds only addresses with work in flight.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use super::State;

/// A slot for one tunnel or forwarded request; freed when dropped.
pub(crate) struct Slot {
    _global: OwnedSemaphorePermit,
    state: Arc<State>,
    client: IpAddr,
}

/// Which limit was reached.
pub(crate) enum Full {
    Global(usize),
    Client(usize),
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Full::Global(max) => write!(f, "{max} tunnels and requests are open (--max-tunnels)"),
            Full::Client(max) => write!(
                f,
                "this client has {max} tunnels and requests open (--max-tunnels-per-client)"
            ),
        }
    }
}

pub(crate) fn acquire(state: &Arc<State>, client: IpAddr) -> Result<Slot, Full> {
    let global = state
        .tunnels
        .clone()
        .try_acquire_owned()
        .map_err(|_| Full::Global(state.config.max_tunnels))?;
    let mut per_client = state.per_client.lock().expect("not poisoned");
    let count = per_client.entry(client).or_insert(0);
    if *count >= state.config.max_tunnels_per_client {
        let max = state.config.max_tunnels_per_client;
        if *count == 0 {
            per_client.remove(&client);
        }
        return Err(Full::Client(max));
    }
    *count += 1;
    Ok(Slot {
        _global: global,
        state: state.clone(),
        client,
    })
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_client = self.state.per_client.lock().expect("not poisoned");
        if let Some(count) = per_client.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                per_client.remove(&self.client);
            }
        }
    }
}
