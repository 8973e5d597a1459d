//! Per-process figures into the plan's roles (pure).

use std::collections::BTreeMap;

use crate::plan::{RoleCost, ROLE_ENGINE, ROLE_GATEWAY};

/// Puts the hold costs measured at the ceiling (per process of the ceiling's
/// deployment: `node`; `gateway0`, `engine0`, `projector`, `broker`, `postgres`) in
/// place of the cost runs' for the roles they are (`gateway0` is `gateway`, `engine0`
/// `engine`). The cost runs' follower costs, reads, checkouts and memory stay.
pub fn hold_costs_at_ceiling(roles: &mut BTreeMap<String, RoleCost>, at: &BTreeMap<String, f64>) {
    for (proc, us) in at {
        let role = proc.strip_suffix('0').unwrap_or(proc);
        if let Some(r) = roles.get_mut(role) {
            r.cpu_us_per_hold = *us;
        }
    }
}

/// Folds the per-process figures of the Kafka deployment into roles: `gateway` is the
/// driven gateway 0 with gateway 1's hold cost as its follower cost; `engine` is the
/// engine that spent more per hold (it owned the SKU's partition), the other its
/// follower (standby).
pub fn kafka_roles(mut p: BTreeMap<String, RoleCost>) -> BTreeMap<String, RoleCost> {
    let mut roles = BTreeMap::new();
    if let (Some(mut g0), Some(g1)) = (p.remove("gateway0"), p.remove("gateway1")) {
        g0.follower_cpu_us_per_hold = Some(g1.cpu_us_per_hold);
        roles.insert(ROLE_GATEWAY.to_string(), g0);
    }
    if let (Some(e0), Some(e1)) = (p.remove("engine0"), p.remove("engine1")) {
        let (mut owner, standby) = if e0.cpu_us_per_hold >= e1.cpu_us_per_hold {
            (e0, e1)
        } else {
            (e1, e0)
        };
        owner.follower_cpu_us_per_hold = Some(standby.cpu_us_per_hold);
        roles.insert(ROLE_ENGINE.to_string(), owner);
    }
    roles.extend(p);
    roles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_costs_at_the_ceiling_replace_the_cost_runs() {
        let mut roles: BTreeMap<String, RoleCost> = [
            (
                ROLE_GATEWAY.to_string(),
                RoleCost {
                    cpu_us_per_hold: 209.0,
                    cpu_us_per_read: 16.0,
                    follower_cpu_us_per_hold: Some(38.0),
                    ..RoleCost::default()
                },
            ),
            (
                ROLE_ENGINE.to_string(),
                RoleCost {
                    cpu_us_per_hold: 122.0,
                    ..RoleCost::default()
                },
            ),
            (
                "projector".to_string(),
                RoleCost {
                    cpu_us_per_hold: 221.0,
                    ..RoleCost::default()
                },
            ),
        ]
        .into();
        let at: BTreeMap<String, f64> = [
            ("gateway0".to_string(), 79.0),
            ("engine0".to_string(), 27.0),
            ("projector".to_string(), 22.0),
            ("unknown".to_string(), 5.0),
        ]
        .into();
        hold_costs_at_ceiling(&mut roles, &at);
        assert_eq!(roles[ROLE_GATEWAY].cpu_us_per_hold, 79.0);
        assert_eq!(roles[ROLE_GATEWAY].cpu_us_per_read, 16.0, "reads stay");
        assert_eq!(
            roles[ROLE_GATEWAY].follower_cpu_us_per_hold,
            Some(38.0),
            "followers stay"
        );
        assert_eq!(roles[ROLE_ENGINE].cpu_us_per_hold, 27.0);
        assert_eq!(roles["projector"].cpu_us_per_hold, 22.0);
        assert_eq!(roles.len(), 3, "no role made up");
    }

    #[test]
    fn kafka_processes_fold_into_roles() {
        let c = |hold: f64| RoleCost {
            cpu_us_per_hold: hold,
            ..RoleCost::default()
        };
        let p: BTreeMap<String, RoleCost> = [
            ("gateway0".to_string(), c(90.0)),
            ("gateway1".to_string(), c(15.0)),
            ("engine0".to_string(), c(4.0)),
            ("engine1".to_string(), c(40.0)),
            ("projector".to_string(), c(10.0)),
        ]
        .into();
        let r = kafka_roles(p);
        assert_eq!(
            r.keys().collect::<Vec<_>>(),
            ["engine", "gateway", "projector"]
        );
        assert_eq!(r["gateway"].cpu_us_per_hold, 90.0);
        assert_eq!(r["gateway"].follower_cpu_us_per_hold, Some(15.0));
        assert_eq!(r["engine"].cpu_us_per_hold, 40.0, "the owner spent more");
        assert_eq!(r["engine"].follower_cpu_us_per_hold, Some(4.0));
    }
}
