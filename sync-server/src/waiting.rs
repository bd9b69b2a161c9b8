//! Caps on the pulls that wait for changes (long-polls).
//!
//! A waiting pull holds its connection, and with it one of the process's file
//! descriptors, for up to `max_wait`. Uncapped, waiting devices use up the
//! descriptors and writes can no longer get in: with a limit of 3,000 open files
//! and 4,000 waiting devices, a writer's push timed out. The rules:
//!
//! - **Only the wait counts.** A pull that has changes to return, or that asks for
//!   no wait, is answered without a slot. A pull takes a slot when it starts
//!   waiting and gives it back when it answers, however its wait ends (a change,
//!   the end of its wait, the shutdown).
//! - **Two caps.** At most [`WaitingCaps::per_server`] pulls wait at once, and at
//!   most [`WaitingCaps::per_user`] of one user (a token's `sub`, across
//!   databases), so that one account cannot take every slot. API keys are not held
//!   to the per-user cap: they are the operator's own services, whose workers may
//!   each wait; their pulls count toward the server's cap.
//! - **Refused at once.** A pull that would wait beyond a cap is answered 429 Too
//!   Many Requests with `Retry-After` ([`RETRY_WAITING_AFTER`]) and
//!   `Connection: close`: the device backs off, and the connection does not hold
//!   a descriptor meanwhile.
//! - **Room for pushes.** The server's cap stays below the open-file limit: it is
//!   `min(max_waiting_pulls, limit - reserve)` ([`effective_cap`]), where the
//!   reserve ([`reserved_files`]) keeps a quarter of the limit, and at least
//!   [`MIN_RESERVED_FILES`], for pushes, other requests and SQLite's files. At
//!   start the server raises its soft limit to the hard one
//!   ([`raise_open_files_limit`]).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::auth::Principal;
use crate::config::Limits;
use crate::error::Error;

/// What a refused long-poll is told to wait before it pulls again. Slots free up
/// as waits end (within `max_wait`) or changes arrive; a device that comes back
/// sooner most likely costs the server one more refusal, and ten seconds late is
/// a bearable delay for the devices beyond the caps.
pub const RETRY_WAITING_AFTER: Duration = Duration::from_secs(10);

/// The fewest file descriptors kept out of the waiting pulls' reach, whatever
/// the limit: a few hundred pushes and other requests, the listening socket,
/// and SQLite's database, journal and shared-memory files.
pub const MIN_RESERVED_FILES: u64 = 256;

/// The caps waiting pulls are held to, once the open-file limit is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitingCaps {
    /// The most pulls waiting at once on the server.
    pub per_server: usize,
    /// The most pulls of one user waiting at once.
    pub per_user: usize,
}

impl WaitingCaps {
    /// The caps of `limits` in a process that may open `open_files` files.
    ///
    /// ```
    /// use sync_server::Limits;
    /// use sync_server::waiting::WaitingCaps;
    ///
    /// let caps = WaitingCaps::new(&Limits::default(), 4_096);
    /// assert_eq!(caps.per_server, 3_072); // a quarter of the files kept for pushes
    /// ```
    pub fn new(limits: &Limits, open_files: u64) -> Self {
        let per_server = effective_cap(limits.max_waiting_pulls, open_files);
        Self {
            per_server,
            per_user: limits.max_waiting_pulls_per_user.min(per_server),
        }
    }
}

/// The file descriptors kept for everything but waiting pulls, out of a limit
/// of `open_files`: a quarter, and at least [`MIN_RESERVED_FILES`].
///
/// ```
/// use sync_server::waiting::reserved_files;
///
/// assert_eq!(reserved_files(3_000), 750);
/// assert_eq!(reserved_files(100), 256);
/// ```
pub fn reserved_files(open_files: u64) -> u64 {
    (open_files / 4).max(MIN_RESERVED_FILES)
}

/// The server's cap on waiting pulls: the `configured` one, lowered so that the
/// waiting pulls leave [`reserved_files`] of `open_files` free.
///
/// ```
/// use sync_server::waiting::effective_cap;
///
/// assert_eq!(effective_cap(10_000, 3_000), 2_250);
/// assert_eq!(effective_cap(10_000, 1 << 20), 10_000);
/// ```
pub fn effective_cap(configured: usize, open_files: u64) -> usize {
    let room = open_files.saturating_sub(reserved_files(open_files));
    usize::try_from(room).map_or(configured, |room| configured.min(room))
}

/// Raises the process's soft limit on open files to its hard limit, and returns
/// the limit now in force (`u64::MAX` where there is none). A failure is logged
/// and leaves the limit as it was.
pub fn raise_open_files_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot raise the open-file limit");
            open_files_limit()
        }
    }
}

/// The process's soft limit on open files (`u64::MAX` where there is none, or
/// where it cannot be read).
pub fn open_files_limit() -> u64 {
    #[cfg(unix)]
    {
        rlimit::Resource::NOFILE
            .get()
            .map_or(u64::MAX, |(soft, _hard)| soft)
    }
    #[cfg(not(unix))]
    {
        u64::MAX
    }
}

/// The pulls waiting right now, held to their caps.
pub(crate) struct WaitingPulls {
    caps: WaitingCaps,
    counts: Mutex<Counts>,
}

/// One lock over both counts, so that a pull is admitted against both at once.
#[derive(Default)]
struct Counts {
    total: usize,
    /// Only users with a pull waiting: an entry goes when its count reaches 0.
    by_user: HashMap<String, usize>,
}

impl WaitingPulls {
    pub(crate) fn new(caps: WaitingCaps) -> Self {
        Self {
            caps,
            counts: Mutex::new(Counts::default()),
        }
    }

    pub(crate) fn caps(&self) -> WaitingCaps {
        self.caps
    }

    /// How many pulls wait right now.
    pub(crate) fn count(&self) -> usize {
        self.counts().total
    }

    /// A slot for a pull of `caller` that is about to wait, or the 429 that
    /// refuses it when a cap is reached.
    pub(crate) fn try_start(&self, caller: &Principal) -> Result<WaitingSlot<'_>, Error> {
        let user = match caller {
            Principal::User { id, .. } => Some(id),
            Principal::Admin => None,
        };
        let mut counts = self.counts();
        if let Some(user) = user
            && counts.by_user.get(user).copied().unwrap_or(0) >= self.caps.per_user
        {
            return Err(Error::TooManyWaitingPulls {
                reason: format!(
                    "this user has {} pulls waiting for changes already, the most one user may have",
                    self.caps.per_user
                ),
                retry_after: RETRY_WAITING_AFTER,
            });
        }
        if counts.total >= self.caps.per_server {
            return Err(Error::TooManyWaitingPulls {
                reason: format!(
                    "the server has {} pulls waiting for changes already, the most it takes",
                    self.caps.per_server
                ),
                retry_after: RETRY_WAITING_AFTER,
            });
        }
        counts.total += 1;
        if let Some(user) = user {
            *counts.by_user.entry(user.clone()).or_default() += 1;
        }
        Ok(WaitingSlot {
            pulls: self,
            user: user.cloned(),
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        // The counts are consistent at every await-free step; a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A waiting pull's slot, given back when dropped.
pub(crate) struct WaitingSlot<'a> {
    pulls: &'a WaitingPulls,
    user: Option<String>,
}

impl Drop for WaitingSlot<'_> {
    fn drop(&mut self) {
        let mut counts = self.pulls.counts();
        counts.total -= 1;
        if let Some(user) = &self.user
            && let Some(count) = counts.by_user.get_mut(user)
        {
            *count -= 1;
            if *count == 0 {
                counts.by_user.remove(user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> Principal {
        Principal::User {
            id: id.to_owned(),
            claims: serde_json::Map::new(),
        }
    }

    fn pulls(per_server: usize, per_user: usize) -> WaitingPulls {
        WaitingPulls::new(WaitingCaps {
            per_server,
            per_user,
        })
    }

    #[test]
    fn the_effective_cap_leaves_a_quarter_of_the_files_and_at_least_the_minimum() {
        // No files at all, or fewer than the reserve: no pull may wait.
        assert_eq!(effective_cap(16_384, 0), 0);
        assert_eq!(effective_cap(16_384, 100), 0);
        assert_eq!(effective_cap(16_384, MIN_RESERVED_FILES), 0);
        // Small limits keep the minimum reserve rather than a quarter.
        assert_eq!(effective_cap(16_384, 1_000), 1_000 - 256);
        // A quarter kept: the issue's limit of 3,000 lets 2,250 wait.
        assert_eq!(effective_cap(16_384, 3_000), 2_250);
        // Exactly enough files for the configured cap and its reserve.
        assert_eq!(effective_cap(3_072, 4_096), 3_072);
        assert_eq!(effective_cap(3_073, 4_096), 3_072);
        // A huge limit, or none (RLIM_INFINITY): the configured cap.
        assert_eq!(effective_cap(16_384, 1 << 20), 16_384);
        assert_eq!(effective_cap(16_384, u64::MAX), 16_384);
        assert_eq!(
            effective_cap(usize::MAX, u64::MAX),
            (u64::MAX - u64::MAX / 4) as usize
        );
    }

    #[test]
    fn the_per_user_cap_is_never_above_the_servers() {
        let limits = Limits {
            max_waiting_pulls: 1_000,
            max_waiting_pulls_per_user: 16,
            ..Limits::default()
        };
        assert_eq!(WaitingCaps::new(&limits, 300).per_user, 16);
        assert_eq!(WaitingCaps::new(&limits, 260).per_user, 4);
    }

    #[test]
    fn the_defaults_let_ten_thousand_users_wait_at_once() {
        let limits = Limits::default();
        assert_eq!(limits.max_waiting_pulls, 16_384);
        assert_eq!(limits.max_waiting_pulls_per_user, 16);
        // The open-file limits they need: 13,333 for 10,000 waiting pulls, 21,845
        // for all of them, well under the usual hard limits.
        assert_eq!(effective_cap(limits.max_waiting_pulls, 13_333), 10_000);
        assert!(effective_cap(limits.max_waiting_pulls, 13_332) < 10_000);
        assert_eq!(effective_cap(limits.max_waiting_pulls, 21_845), 16_384);
        assert!(effective_cap(limits.max_waiting_pulls, 21_844) < 16_384);

        let pulls = WaitingPulls::new(WaitingCaps::new(&limits, 1 << 20));
        let users: Vec<Principal> = (0..10_000).map(|n| user(&format!("user-{n}"))).collect();
        let slots: Vec<WaitingSlot<'_>> = users
            .iter()
            .map(|caller| pulls.try_start(caller).unwrap())
            .collect();
        assert_eq!(pulls.count(), 10_000);
        drop(slots);
        assert_eq!(pulls.count(), 0);
    }

    #[test]
    fn a_user_beyond_the_per_user_cap_is_refused_and_others_are_not() {
        let pulls = pulls(4, 2);
        let (alice, bob) = (user("alice"), user("bob"));
        let _first = pulls.try_start(&alice).unwrap();
        let _second = pulls.try_start(&alice).unwrap();
        let refused = pulls.try_start(&alice).err().unwrap();
        assert!(matches!(refused, Error::TooManyWaitingPulls { .. }));
        assert!(refused.to_string().contains("user"), "{refused}");
        let _bob = pulls.try_start(&bob).unwrap();
        assert_eq!(pulls.count(), 3);
    }

    #[test]
    fn the_server_cap_refuses_every_caller_even_api_keys() {
        let pulls = pulls(2, 2);
        let _alice = pulls.try_start(&user("alice")).unwrap();
        let _bob = pulls.try_start(&user("bob")).unwrap();
        for caller in [user("carol"), Principal::Admin] {
            let refused = pulls.try_start(&caller).err().unwrap();
            assert!(refused.to_string().contains("server"), "{refused}");
        }
        assert_eq!(pulls.count(), 2);
    }

    #[test]
    fn api_keys_are_not_held_to_the_per_user_cap() {
        let pulls = pulls(4, 1);
        let _slots: Vec<_> = (0..4)
            .map(|_| pulls.try_start(&Principal::Admin).unwrap())
            .collect();
        assert_eq!(pulls.count(), 4);
    }

    #[test]
    fn a_slot_given_back_admits_the_next_pull() {
        let pulls = pulls(4, 1);
        let alice = user("alice");
        let slot = pulls.try_start(&alice).unwrap();
        assert!(pulls.try_start(&alice).is_err());
        drop(slot);
        assert_eq!(pulls.count(), 0);
        assert!(pulls.counts().by_user.is_empty());
        let _again = pulls.try_start(&alice).unwrap();
        assert_eq!(pulls.count(), 1);
    }

    #[test]
    fn a_refusal_takes_no_slot() {
        let pulls = pulls(1, 1);
        let _held = pulls.try_start(&user("alice")).unwrap();
        for _ in 0..3 {
            assert!(pulls.try_start(&user("alice")).is_err());
            assert!(pulls.try_start(&user("bob")).is_err());
        }
        assert_eq!(pulls.count(), 1);
        assert!(!pulls.counts().by_user.contains_key("bob"));
    }

    #[test]
    fn concurrent_pulls_never_exceed_the_caps() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let pulls = pulls(5, 2);
        let waiting = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let by_user = [const { AtomicUsize::new(0) }; 3];
        let most_of_a_user = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            // Three threads per user, so that every cap is contended.
            for thread in 0..9 {
                let (pulls, waiting, most) = (&pulls, &waiting, &most);
                let (by_user, most_of_a_user) = (&by_user, &most_of_a_user);
                scope.spawn(move || {
                    let caller = user(&format!("user-{}", thread % 3));
                    let mine = &by_user[thread % 3];
                    for _ in 0..2_000 {
                        if let Ok(_slot) = pulls.try_start(&caller) {
                            most.fetch_max(waiting.fetch_add(1, SeqCst) + 1, SeqCst);
                            most_of_a_user.fetch_max(mine.fetch_add(1, SeqCst) + 1, SeqCst);
                            mine.fetch_sub(1, SeqCst);
                            waiting.fetch_sub(1, SeqCst);
                        }
                    }
                });
            }
        });
        assert!(most.into_inner() <= 5);
        assert!(most_of_a_user.into_inner() <= 2);
        assert_eq!(pulls.count(), 0);
        assert!(pulls.counts().by_user.is_empty());
    }
}
