//! Counts of everything the engine did that is not visible as a `receipt_complete`.
//!
//! The engine only counts; the runtime turns these into Prometheus counters. Each field is
//! one value of the `outcome` label, so the set is small and fixed.

macro_rules! outcomes {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Outcomes {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Outcomes {
            /// Every counter with its name, in declaration order.
            pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [$((stringify!($name), self.$name)),*].into_iter()
            }

            /// Adds `other` to `self`, field by field.
            pub fn add(&mut self, other: &Outcomes) {
                $(self.$name += other.$name;)*
            }

            /// `self - earlier`, field by field.
            pub fn since(&self, earlier: &Outcomes) -> Outcomes {
                Outcomes { $($name: self.$name - earlier.$name,)* }
            }

            pub const NAMES: &'static [&'static str] = &[$(stringify!($name)),*];
        }
    };
}

outcomes! {
    /// A message got a seq (rule 3).
    message_applied,
    /// A non-member became a member (rule 1).
    join_applied,
    /// A member left (rule 2).
    leave_applied,
    /// A read by a member was applied (rule 4 or 5), at once or after parking.
    read_applied,
    /// A join of a user who already was a member (rule 1: no-op).
    join_of_member,
    /// A leave of a user who was not a member (rule 2: no-op).
    leave_of_non_member,
    /// A second message with a known id (rule 9).
    duplicate_message,
    /// A read by a user who is not a member when it is applied (rule 4).
    read_by_non_member,
    /// A read of a message not applied yet was parked (rule 8).
    read_parked,
    /// A parked read was applied when its message arrived (rule 8).
    parked_read_applied,
    /// A parked read was dropped because its user had too many parked in the room (rule 8).
    parked_read_dropped,
    /// A parked read's message never arrived in time (rule 8).
    parked_read_expired,
    /// A `scope: message` read of a message that is no longer pending: nothing to add.
    message_read_of_finished,
    /// A pending message was not read by everyone in time (rule 10).
    pending_expired,
    /// A finished message's marker reached its retention time (rule 10).
    marker_expired,
    /// A message sent to a room above the large-room limit is not tracked (rule 11).
    large_room_message,
    /// A message completed with no required reader (rule 7).
    trivial_completion,
    /// A trivial completion not emitted because of `suppress_trivial` (rule 7).
    trivial_suppressed,
    /// A `receipt_complete` was emitted (rule 6).
    receipt_emitted,
}
