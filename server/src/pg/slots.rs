//! Connection slots: how many Postgres sessions may run at once (`max_connections`, the last
//! `superuser_reserved_connections` of them for superusers only), and per role (`CONNECTION
//! LIMIT`), as PostgreSQL counts them. A slot is held by a guard that the connection keeps
//! and gives back when it closes.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// Why a session could not start (SQLSTATE 53300, PostgreSQL's messages).
#[derive(Debug, PartialEq, Eq)]
pub struct TooMany(pub String);

pub struct Slots {
    max: usize,
    reserved: usize,
    /// Sessions per role name, and their total.
    used: Mutex<(usize, HashMap<String, usize>)>,
}

/// A session's slot; given back on drop.
pub struct Slot {
    slots: Arc<Slots>,
    user: String,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot({})", self.user)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut used = self.slots.used.lock();
        used.0 -= 1;
        if let Some(n) = used.1.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                used.1.remove(&self.user);
            }
        }
    }
}

impl Slots {
    pub fn new(max: usize, reserved: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            reserved,
            used: Mutex::new((0, HashMap::new())),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Takes a slot for a session of `user`; `role_limit` is the role's CONNECTION LIMIT
    /// (negative: none), which, as the reserved slots, does not bind superusers.
    pub fn claim(
        self: &Arc<Self>,
        user: &str,
        superuser: bool,
        role_limit: i32,
    ) -> Result<Slot, TooMany> {
        let mut used = self.used.lock();
        let total = used.0;
        if total >= self.max {
            return Err(TooMany("sorry, too many clients already".into()));
        }
        if !superuser && total >= self.max - self.reserved {
            return Err(TooMany(
                "remaining connection slots are reserved for roles with the SUPERUSER attribute"
                    .into(),
            ));
        }
        let mine = used.1.get(user).copied().unwrap_or(0);
        if !superuser && role_limit >= 0 && mine >= role_limit as usize {
            return Err(TooMany(format!("too many connections for role \"{user}\"")));
        }
        used.0 += 1;
        *used.1.entry(user.to_string()).or_default() += 1;
        Ok(Slot {
            slots: self.clone(),
            user: user.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_slots_and_role_limits() {
        let slots = Slots::new(3, 1);
        let a = slots.claim("app", false, 2).unwrap();
        let _b = slots.claim("app", false, 2).unwrap();
        assert_eq!(
            slots.claim("app", false, 5).unwrap_err().0,
            "remaining connection slots are reserved for roles with the SUPERUSER attribute"
        );
        drop(a);
        assert_eq!(
            slots.claim("app", false, 1).unwrap_err().0,
            "too many connections for role \"app\""
        );
        let _c = slots.claim("other", false, -1).unwrap();
        // The reserved slot, for a superuser, whatever its role's limit.
        let _admin = slots.claim("eddy", true, 0).unwrap();
        assert_eq!(
            slots.claim("eddy", true, -1).unwrap_err().0,
            "sorry, too many clients already"
        );
    }
}
