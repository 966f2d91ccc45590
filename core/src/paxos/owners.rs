//! Reading who holds a resource without acquiring it (sanlock's read_resource_owners).

use super::*;

/// A host holding a resource, as read from its area.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Holder {
    /// Host id.
    pub host_id: u64,
    /// Lockspace generation it holds the lease in.
    pub generation: u64,
    /// Leader timestamp for the exclusive owner; 0 for shared holders (none is recorded).
    pub timestamp: u64,
}

/// Who holds a resource, read without acquiring it (sanlock's read_resource_owners).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Owners {
    /// The leader's lease version.
    pub lver: u64,
    /// The resource's num_hosts.
    pub num_hosts: u64,
    /// The exclusive owner: the host the leader names, unless the lease is free or that host
    /// marked its dblock RELEASED in this lver.
    pub exclusive: Option<Holder>,
    /// Hosts whose mode block says SHARED, in host id order.
    pub shared: Vec<Holder>,
    /// The leader names an owner that released (its dblock has RELEASED at this lver).
    pub owner_released: bool,
    /// The leader as read.
    pub leader: LeaderRecord,
}

/// Reads the owners from a resource area's bytes: leader, request record and the dblock
/// sectors of hosts 1..num_hosts (fewer bytes is a `Corrupt` "short" error).
pub fn owners_from_area(
    data: &[u8],
    geometry: Geometry,
    space: &Name,
    resource: Option<&Name>,
) -> Result<Owners, PaxosError> {
    let leader = LeaderRecord::decode_expect(data, LeaderKind::Paxos, geometry, space, resource)
        .map_err(|e| PaxosError::Corrupt(e.to_string()))?;
    let ss = geometry.sector_size_bytes() as usize;
    let mut shared = Vec::new();
    let mut owner_released = false;
    for host in 1..=leader.num_hosts {
        let sector = host_sector(data, ss, host)
            .ok_or_else(|| PaxosError::Corrupt(format!("short read: no dblock for host {host}")))?;
        let d = Dblock::decode(sector)
            .map_err(|e| PaxosError::Corrupt(format!("dblock of host {host}: {e}")))?;
        if host == leader.owner_id && d.lver == leader.lver && d.flags & DBLOCK_FLAG_RELEASED != 0 {
            owner_released = true;
        }
        let mode = tenure_format::paxos::ModeBlock::decode_from_sector(sector)
            .map_err(|e| PaxosError::Corrupt(format!("mode block of host {host}: {e}")))?;
        if mode.is_shared() {
            shared.push(Holder {
                host_id: host,
                generation: mode.generation,
                timestamp: 0,
            });
        }
    }
    let exclusive = (leader.timestamp != 0 && !owner_released).then_some(Holder {
        host_id: leader.owner_id,
        generation: leader.owner_generation,
        timestamp: leader.timestamp,
    });
    Ok(Owners {
        lver: leader.lver,
        num_hosts: leader.num_hosts,
        exclusive,
        shared,
        owner_released,
        leader,
    })
}
