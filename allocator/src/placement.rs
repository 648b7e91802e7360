//! Replica placement: which devices a request's replicas go to.
//!
//! Devices of the target come first, then every other rw device; within each group the device
//! with the most buckets available goes first, ties broken by device index so that placement is
//! deterministic. Each chosen device adds its durability (a durability-2 device alone gives two
//! replicas; durability 0 adds nothing, so such devices are never chosen), replicas land on
//! distinct devices by construction, and placement stops once the durability reaches the
//! request's replica count.
//!
//! Greedy is complete here: every device that can serve adds at least 1, so if taking all of
//! them falls short, no other choice does better.

/// One device as placement sees it.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    pub dev: u8,
    pub durability: u8,
    pub in_target: bool,
    /// What the device can give now, used for ordering; 0 means it cannot serve now.
    pub available: u64,
    /// Whether the device could serve the request once everything on it is freed.
    pub could_ever_serve: bool,
}

/// Why placement failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shortfall {
    /// Even with every bucket freed, the devices give only this much durability.
    Insufficient { durability: u32 },
    /// The devices could serve, but those with buckets available now give only this much.
    Blocked { durability: u32 },
}

/// Chooses the devices for `nr_replicas` replicas, in placement order.
pub(crate) fn place(mut cands: Vec<Candidate>, nr_replicas: u8) -> Result<Vec<u8>, Shortfall> {
    let want = u32::from(nr_replicas);
    let ever: u32 = cands
        .iter()
        .filter(|c| c.could_ever_serve && c.durability > 0)
        .map(|c| u32::from(c.durability))
        .sum();
    if ever < want {
        return Err(Shortfall::Insufficient { durability: ever });
    }
    cands.retain(|c| c.could_ever_serve && c.durability > 0 && c.available > 0);
    cands.sort_by_key(|c| (!c.in_target, std::cmp::Reverse(c.available), c.dev));
    let mut chosen = Vec::new();
    let mut durability = 0u32;
    for c in &cands {
        if durability >= want {
            break;
        }
        chosen.push(c.dev);
        durability += u32::from(c.durability);
    }
    if durability < want {
        return Err(Shortfall::Blocked { durability });
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(dev: u8, durability: u8, in_target: bool, available: u64) -> Candidate {
        Candidate { dev, durability, in_target, available, could_ever_serve: true }
    }

    /// Target devices come first even when others have more free buckets; within a group the
    /// fuller free list wins; a durability-2 device satisfies two replicas alone.
    #[test]
    fn order_and_durability() {
        let cands =
            vec![cand(0, 1, false, 100), cand(1, 1, true, 5), cand(2, 1, true, 9), cand(3, 2, false, 1)];
        assert_eq!(place(cands.clone(), 2), Ok(vec![2, 1]));
        assert_eq!(place(cands.clone(), 3), Ok(vec![2, 1, 0]));
        assert_eq!(place(cands.clone(), 5), Ok(vec![2, 1, 0, 3]));
        assert_eq!(place(cands, 6), Err(Shortfall::Insufficient { durability: 5 }));
        assert_eq!(place(vec![cand(0, 1, false, 3), cand(1, 2, false, 1)], 2), Ok(vec![0, 1]));
        assert_eq!(place(vec![cand(0, 2, false, 1)], 2), Ok(vec![0]));
    }

    /// Devices that could serve but have nothing available now make a blocked shortfall, not an
    /// insufficient one; durability-0 devices count for neither.
    #[test]
    fn blocked_versus_insufficient() {
        let cands = vec![cand(0, 1, true, 0), cand(1, 1, true, 4), cand(2, 0, true, 50)];
        assert_eq!(place(cands.clone(), 2), Err(Shortfall::Blocked { durability: 1 }));
        assert_eq!(place(cands, 3), Err(Shortfall::Insufficient { durability: 2 }));
        let never = Candidate { could_ever_serve: false, ..cand(0, 1, false, 0) };
        assert_eq!(place(vec![never], 1), Err(Shortfall::Insufficient { durability: 0 }));
    }
}
