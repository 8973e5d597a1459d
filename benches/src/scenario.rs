//! The workload: what a run offers to the server, independent of where the server is.
//!
//! A [`Scenario`] comes from defaults, then a TOML file, then command-line flags (each
//! layer overrides the one before), and is validated once by [`Scenario::validate`]. It is
//! echoed verbatim as the `scenario` object of the JSON report, so a report says exactly
//! what produced it.

use serde::{Deserialize, Serialize};

use crate::error::BenchError;

/// Most products one sale may have (docs/api.md).
pub const MAX_PRODUCTS: u32 = 100;
/// Longest run the harness accepts, warm-up included: every load loop is bounded.
pub const MAX_RUN_SECS: f64 = 3600.0;
/// Highest rate of one stream the harness accepts.
pub const MAX_RATE_PER_S: f64 = 1_000_000.0;
/// Most report windows of one run (`sample_secs`): each holds a latency histogram per
/// operation, so their number is bounded.
pub const MAX_WINDOWS: usize = 720;

/// One workload. Field names are the TOML keys (snake_case).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Products in the sale (1–100). Product 0 is the hot SKU.
    pub products: u32,
    /// Units of each product.
    pub inventory_per_product: i64,
    /// `perUserLimit` of each product.
    pub per_user_limit: u32,
    /// Distinct users the writes are spread over.
    pub users: u32,
    /// Share (0–1) of writes and reads that go to the hot SKU; the rest are spread evenly
    /// over the other products. Ignored with one product.
    pub hot_sku_share: f64,
    /// Availability reads per reservation attempt, used when `read_rate_per_s` is unset.
    pub reads_per_write: f64,
    /// Steady reservation attempts per second.
    pub write_rate_per_s: f64,
    /// Steady availability reads per second; default `write_rate_per_s × reads_per_write`.
    pub read_rate_per_s: Option<f64>,
    /// Flash-crowd window in ms: the crowd's users each send one reservation in the first
    /// N ms, on top of the steady stream. 0 turns the crowd off.
    pub flash_crowd_ms: u64,
    /// Users in the crowd; default all `users`.
    pub flash_crowd_users: Option<u32>,
    /// Share (0–1) of the crowd that goes for the hot SKU; default `hot_sku_share`. The
    /// big crowd sets 1 (everyone wants the one product) with `hot_sku_share` 0 (the
    /// steady stream shops the other products meanwhile).
    pub crowd_hot_share: Option<f64>,
    /// Offered write rate as a multiple of the target's measured capacity (its
    /// `--find-max` result), e.g. 2 for the overload scenario. When set, the run needs
    /// `--capacity-per-s` (or `--capacity-from`) and `write_rate_per_s` is derived.
    pub capacity_multiplier: Option<f64>,
    /// Share (0–1) of successful reservations that are checked out.
    pub checkout_share: f64,
    /// Delay between a reservation's reply and its checkout, in ms (the "payment").
    pub checkout_delay_ms: u64,
    /// Units per reservation.
    pub quantity: u32,
    /// Length of the measured phase, in seconds.
    pub duration_secs: f64,
    /// Warm-up before it, in seconds, against a separate warm-up sale; not recorded.
    pub warmup_secs: f64,
    /// `reservationTtlSeconds` of the sale. Long by default so that nothing expires during
    /// a run and the correctness check can compare exact counts.
    pub reservation_ttl_secs: u32,
    /// Seed of the schedule's choices (users, SKUs, checkouts): same seed, same requests.
    pub seed: u64,
    /// Every steady reservation comes from a new user (user n for the n-th), as in a long
    /// sale where buyers keep arriving; `users` then sizes only the flash crowd.
    pub fresh_users: bool,
    /// Let holds expire during the run (`reservation_ttl_secs` shorter than the run, as
    /// in the soak). The end-of-run check then skips the one comparison that expiry
    /// makes meaningless (units acknowledged ≤ units held or sold); the others stay.
    pub allow_expiry: bool,
    /// Report figures per window of this many seconds (per minute: 60), with the
    /// watched processes' RSS and CPU and the soak's flatness verdict; 0 = off.
    pub sample_secs: f64,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            products: 1,
            inventory_per_product: 1000,
            per_user_limit: 1,
            users: 10_000,
            hot_sku_share: 1.0,
            reads_per_write: 10.0,
            write_rate_per_s: 200.0,
            read_rate_per_s: None,
            flash_crowd_ms: 0,
            flash_crowd_users: None,
            crowd_hot_share: None,
            capacity_multiplier: None,
            checkout_share: 0.0,
            checkout_delay_ms: 200,
            quantity: 1,
            duration_secs: 10.0,
            warmup_secs: 2.0,
            reservation_ttl_secs: 3600,
            seed: 1,
            fresh_users: false,
            allow_expiry: false,
            sample_secs: 0.0,
        }
    }
}

impl Scenario {
    /// Reads a scenario from TOML text; missing keys keep their defaults.
    pub fn from_toml(text: &str) -> Result<Self, BenchError> {
        toml::from_str(text).map_err(|e| BenchError::Scenario(e.to_string()))
    }

    /// Steady availability reads per second.
    pub fn read_rate(&self) -> f64 {
        self.read_rate_per_s
            .unwrap_or(self.write_rate_per_s * self.reads_per_write)
    }

    /// Users in the flash crowd (0 when the crowd is off).
    pub fn crowd_users(&self) -> u32 {
        if self.flash_crowd_ms == 0 {
            0
        } else {
            self.flash_crowd_users.unwrap_or(self.users).min(self.users)
        }
    }

    /// Share of the crowd that goes for the hot SKU.
    pub fn crowd_hot_share(&self) -> f64 {
        self.crowd_hot_share.unwrap_or(self.hot_sku_share)
    }

    /// Derives the write rate from a measured capacity when the scenario asks for a
    /// multiple of it (overload.toml); a no-op otherwise. Errors when the scenario needs
    /// a capacity and none was given.
    pub fn apply_capacity(&mut self, capacity_per_s: Option<f64>) -> Result<(), BenchError> {
        let Some(m) = self.capacity_multiplier else {
            return Ok(());
        };
        if !(m > 0.0 && m.is_finite()) {
            return Err(BenchError::Scenario(format!(
                "capacity_multiplier must be > 0, got {m}"
            )));
        }
        match capacity_per_s {
            Some(c) if c > 0.0 && c.is_finite() => {
                self.write_rate_per_s = (c * m).round();
                Ok(())
            }
            Some(c) => Err(BenchError::Scenario(format!(
                "the capacity must be > 0 writes/s, got {c}"
            ))),
            None => Err(BenchError::Scenario(format!(
                "this scenario offers {m}× the target's capacity: give it with \
                 --capacity-per-s N or --capacity-from FIND_MAX.json (a --find-max report)"
            ))),
        }
    }

    /// Checks every bound; the harness runs only validated scenarios.
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::Scenario(m));
        if !(1..=MAX_PRODUCTS).contains(&self.products) {
            return bad(format!(
                "products must be 1..={MAX_PRODUCTS}, got {}",
                self.products
            ));
        }
        if self.inventory_per_product < 0 {
            return bad("inventory_per_product must be ≥ 0".into());
        }
        if self.per_user_limit == 0 {
            return bad("per_user_limit must be ≥ 1".into());
        }
        if self.users == 0 {
            return bad("users must be ≥ 1".into());
        }
        for (name, v) in [
            ("hot_sku_share", self.hot_sku_share),
            ("crowd_hot_share", self.crowd_hot_share()),
            ("checkout_share", self.checkout_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{name} must be within 0..=1, got {v}"));
            }
        }
        if !(self.reads_per_write >= 0.0 && self.reads_per_write.is_finite()) {
            return bad("reads_per_write must be ≥ 0".into());
        }
        for (name, v) in [
            ("write_rate_per_s", self.write_rate_per_s),
            ("read rate", self.read_rate()),
        ] {
            if !(0.0..=MAX_RATE_PER_S).contains(&v) {
                return bad(format!(
                    "{name} must be within 0..={MAX_RATE_PER_S}, got {v}"
                ));
            }
        }
        if !(1..=1_000_000).contains(&self.quantity) {
            return bad("quantity must be 1..=1000000".into());
        }
        if !(self.duration_secs > 0.0 && self.warmup_secs >= 0.0)
            || self.duration_secs + self.warmup_secs > MAX_RUN_SECS
        {
            return bad(format!(
                "duration_secs must be > 0 and duration + warm-up ≤ {MAX_RUN_SECS} s"
            ));
        }
        if self.flash_crowd_ms as f64 > self.duration_secs * 1000.0 {
            return bad("flash_crowd_ms must fit in the measured phase".into());
        }
        if !(1..=3600).contains(&self.reservation_ttl_secs) {
            return bad("reservation_ttl_secs must be 1..=3600".into());
        }
        if !self.allow_expiry
            && (self.reservation_ttl_secs as f64) < self.duration_secs + self.warmup_secs + 10.0
        {
            // Expiry would free units mid-run and the exact-count checks would raise false
            // alarms; refuse rather than report nonsense.
            return bad(
                "reservation_ttl_secs must outlast the run by 10 s (or set allow_expiry = true, \
                 as the soak does)"
                    .into(),
            );
        }
        if self.sample_secs != 0.0 {
            if !(self.sample_secs >= 1.0 && self.sample_secs <= MAX_RUN_SECS) {
                return bad(format!(
                    "sample_secs must be 0 (off) or 1..={MAX_RUN_SECS}, got {}",
                    self.sample_secs
                ));
            }
            let windows = (self.duration_secs / self.sample_secs).ceil();
            if windows > MAX_WINDOWS as f64 {
                return bad(format!(
                    "sample_secs {} gives {windows} windows over {} s; at most {MAX_WINDOWS}: \
                     raise sample_secs",
                    self.sample_secs, self.duration_secs
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Scenario::default().validate().unwrap();
    }

    #[test]
    fn toml_overrides_defaults_and_rejects_typos() {
        let s = Scenario::from_toml("products = 5\nflash_crowd_ms = 300\nread_rate_per_s = 50.0\n")
            .unwrap();
        assert_eq!(s.products, 5);
        assert_eq!(s.flash_crowd_ms, 300);
        assert_eq!(s.read_rate(), 50.0);
        assert_eq!(s.users, Scenario::default().users);
        assert!(Scenario::from_toml("prodcts = 5").is_err());
    }

    #[test]
    fn shipped_scenarios_are_valid() {
        for text in [
            include_str!("../scenarios/flash-crowd.toml"),
            include_str!("../scenarios/capacity.toml"),
            include_str!("../scenarios/big-crowd.toml"),
            include_str!("../scenarios/soak.toml"),
        ] {
            Scenario::from_toml(text).unwrap().validate().unwrap();
        }
        let mut o = Scenario::from_toml(include_str!("../scenarios/overload.toml")).unwrap();
        assert!(o.apply_capacity(None).is_err(), "overload needs a capacity");
        o.apply_capacity(Some(12_000.0)).unwrap();
        assert_eq!(o.write_rate_per_s, 24_000.0);
        o.validate().unwrap();
        assert_eq!(o.duration_secs, 30.0);
    }

    #[test]
    fn the_big_crowd_is_the_issue_s() {
        let s = Scenario::from_toml(include_str!("../scenarios/big-crowd.toml")).unwrap();
        assert_eq!(s.crowd_users(), 100_000);
        assert!(s.flash_crowd_ms <= 1000);
        assert_eq!(s.inventory_per_product, 1000);
        assert_eq!(s.products, 100);
        assert_eq!(s.crowd_hot_share(), 1.0);
    }

    #[test]
    fn the_soak_is_the_issue_s() {
        let s = Scenario::from_toml(include_str!("../scenarios/soak.toml")).unwrap();
        assert_eq!(s.products, 100);
        assert_eq!(s.hot_sku_share, 0.3);
        assert_eq!(s.write_rate_per_s, 3000.0);
        assert_eq!(s.read_rate(), 9000.0);
        assert_eq!(s.checkout_share, 0.3);
        assert_eq!(s.reservation_ttl_secs, 312);
        assert_eq!(s.duration_secs, 1800.0);
        assert_eq!(s.sample_secs, 60.0);
        assert!(s.fresh_users && s.allow_expiry);
        // Never sells out: every hold of the run on the hot SKU fits its stock.
        let hot_holds = s.write_rate_per_s * s.duration_secs * s.hot_sku_share;
        assert!((s.inventory_per_product as f64) > hot_holds * 2.0);
        // Without allow_expiry the short TTL is refused.
        let strict = Scenario {
            allow_expiry: false,
            ..s
        };
        assert!(strict.validate().is_err());
    }

    #[test]
    fn sample_windows_are_bounded() {
        let mut s = Scenario {
            duration_secs: 1800.0,
            sample_secs: 60.0,
            ..Scenario::default()
        };
        s.reservation_ttl_secs = 3600;
        s.validate().unwrap();
        s.sample_secs = 0.5;
        assert!(s.validate().is_err(), "below 1 s");
        s.sample_secs = 1.0;
        assert!(s.validate().is_err(), "1,800 windows > MAX_WINDOWS");
        s.sample_secs = 0.0;
        s.validate().unwrap();
    }

    #[test]
    fn bounds_are_checked() {
        let mut s = Scenario {
            products: 101,
            ..Scenario::default()
        };
        assert!(s.validate().is_err());
        s.products = 1;
        s.hot_sku_share = 1.5;
        assert!(s.validate().is_err());
        s.hot_sku_share = 0.5;
        s.reservation_ttl_secs = 5;
        assert!(s.validate().is_err());
    }

    #[test]
    fn crowd_size() {
        let mut s = Scenario {
            users: 100,
            ..Scenario::default()
        };
        assert_eq!(s.crowd_users(), 0);
        s.flash_crowd_ms = 100;
        assert_eq!(s.crowd_users(), 100);
        s.flash_crowd_users = Some(500);
        assert_eq!(s.crowd_users(), 100);
        s.flash_crowd_users = Some(10);
        assert_eq!(s.crowd_users(), 10);
    }
}
