//! [`Id`]: a room, user or message id, kept inline when it is short.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// The longest id kept inline, in bytes: `room-12345`, `u_81234567`. A longer one (a
/// 19-digit snowflake id, a UUID's 36 characters) is a shared, reference-counted string.
pub const INLINE: usize = 15;

/// A room, user or message id: a string, compared, ordered and hashed as one (a map keyed
/// by `Id` is looked up by `&str`).
///
/// Ids are the keys of the engine's maps and every event carries two or three, so how they
/// are held is on the processing thread's every step. A short one is kept in the `Id`
/// itself: making, copying, comparing and dropping it touches no other memory and no
/// reference count. A shared string (`Arc<str>`) is an allocation, a reference count changed
/// on every copy and drop, and bytes elsewhere in memory: a hash map's lookup compares keys
/// through the pointer, a cache miss each (`memcmp` was the largest single cost of the
/// processing thread; BENCHMARKS.md, 6 December, a fourteenth session). An `Id` is 16 bytes
/// either way, as an `Arc<str>` is: the records and maps that hold ids do not grow (at 24
/// bytes the router's records outgrew what the compiler copies inline, and copying them
/// cost more than the ids saved).
pub struct Id(Repr);

/// The 16 bytes of an inline id of `b` (at most [`INLINE`] bytes long): `b`, zeros, the tag.
/// Put together in two words from loads that overlap rather than copied into an array byte
/// range (a call to `memmove` for its variable length): the array was then read back whole,
/// which the CPU cannot serve from the stores in flight, and waited for them (a sixth of
/// decoding a read, which makes three ids).
#[inline(always)]
fn inline_bytes(b: &[u8]) -> [u8; 16] {
    let n = b.len();
    debug_assert!(n <= INLINE);
    let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let half = |at: usize| u64::from(u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")));
    let (lo, hi) = if n > 8 {
        // The last 8 bytes, shifted down to start at byte 8: the top ones are gone.
        (word(0), word(n - 8) >> ((16 - n) * 8))
    } else if n == 8 {
        (word(0), 0)
    } else if n >= 4 {
        // Two 4-byte loads that overlap where n < 8: the bytes they share are the same.
        (half(0) | half(n - 4) << ((n - 4) * 8), 0)
    } else if n > 0 {
        let byte = |i: usize| u64::from(b[i]) << (i * 8);
        (byte(0) | byte(n / 2) | byte(n - 1), 0)
    } else {
        (0, 0)
    };
    let tag = u64::from(INLINE_FLAG | n as u8) << 56;
    ((u128::from(hi | tag) << 64) | u128::from(lo)).to_le_bytes()
}

/// Byte 15 tells the two apart: `0x80 | len` when inline; when shared it is the top byte of
/// the length, little-endian, so 0 (an id is far shorter than 2^56 bytes).
#[derive(Clone, Copy)]
#[repr(C)]
union Repr {
    /// The id's bytes, then zeros, then the tag: two inline ids are equal when these are.
    inline: [u8; 16],
    shared: Shared,
}

/// An `Arc<str>` taken apart ([`Arc::into_raw`]): the pointer to its bytes and their number.
#[derive(Clone, Copy)]
#[repr(C)]
struct Shared {
    ptr: *const u8,
    len: [u8; 8],
}

const TAG: usize = 15;
const INLINE_FLAG: u8 = 0x80;
const _: () = assert!(std::mem::size_of::<Shared>() == 16 && std::mem::size_of::<Repr>() == 16);

// SAFETY: an `Id` is an immutable string or an `Arc<str>`, both `Send` and `Sync`.
unsafe impl Send for Id {}
unsafe impl Sync for Id {}

impl Id {
    /// Inlined, so that an inline id is made in registers where it is used: returned through
    /// memory in two halves and read back whole, it waited for the stores (see
    /// [`inline_bytes`]).
    #[inline(always)]
    pub fn new(s: &str) -> Id {
        if s.len() <= INLINE {
            Id(Repr { inline: inline_bytes(s.as_bytes()) })
        } else {
            Id::new_shared(s)
        }
    }

    #[inline(never)]
    fn new_shared(s: &str) -> Id {
        let shared: Arc<str> = Arc::from(s);
        let len = (s.len() as u64).to_le_bytes();
        Id(Repr { shared: Shared { ptr: Arc::into_raw(shared).cast::<u8>(), len } })
    }

    /// Byte 15, which every `Id` has initialized as a plain byte (see [`Repr`]).
    fn tag(&self) -> u8 {
        // SAFETY: byte 15 is the tag of an inline id and the top byte of a shared id's length.
        unsafe { self.0.inline[TAG] }
    }

    /// Whether the id is kept inline (see [`INLINE`]).
    pub fn is_inline(&self) -> bool {
        self.tag() & INLINE_FLAG != 0
    }

    /// The shared string's pointer, as `Arc::into_raw` gave it; `None` for an inline id.
    fn shared(&self) -> Option<*const str> {
        if self.is_inline() {
            return None;
        }
        // SAFETY: not inline, so `shared` is the field written (`Id::new`).
        let Shared { ptr, len } = unsafe { self.0.shared };
        Some(std::ptr::slice_from_raw_parts(ptr, u64::from_le_bytes(len) as usize) as *const str)
    }

    pub fn as_str(&self) -> &str {
        match self.shared() {
            // SAFETY: the string is alive as long as this `Id` holds its count.
            Some(shared) => unsafe { &*shared },
            None => {
                let len = usize::from(self.tag() & !INLINE_FLAG);
                // SAFETY: inline, so `inline` is the field written, and its first `len` bytes
                // were copied from a `str` whole (`Id::new`).
                unsafe { std::str::from_utf8_unchecked(&self.0.inline[..len]) }
            }
        }
    }

    /// Whether both are one shared string (never for inline ids).
    pub fn ptr_eq(a: &Id, b: &Id) -> bool {
        match (a.shared(), b.shared()) {
            (Some(a), Some(b)) => std::ptr::eq(a, b),
            _ => false,
        }
    }
}

#[cfg(test)]
impl Id {
    /// The shared string's reference count; `None` for an inline id.
    fn strong_count(&self) -> Option<usize> {
        // SAFETY: borrowed for the count only, never dropped here.
        self.shared().map(|p| Arc::strong_count(&std::mem::ManuallyDrop::new(unsafe { Arc::from_raw(p) })))
    }
}

impl Clone for Id {
    fn clone(&self) -> Id {
        if let Some(shared) = self.shared() {
            // SAFETY: the pointer came from `Arc::into_raw` and this `Id` holds a count.
            unsafe { Arc::increment_strong_count(shared) };
        }
        Id(self.0)
    }
}

impl Drop for Id {
    fn drop(&mut self) {
        if let Some(shared) = self.shared() {
            // SAFETY: the pointer came from `Arc::into_raw`; this `Id`'s count is given back.
            drop(unsafe { Arc::from_raw(shared) });
        }
    }
}

impl Deref for Id {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Id {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Id {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Id {
    fn eq(&self, other: &Id) -> bool {
        match (self.is_inline(), other.is_inline()) {
            // SAFETY: both inline. 16 bytes compared in two words, without a call to `memcmp`.
            (true, true) => unsafe { self.0.inline == other.0.inline },
            // An id is inline exactly when it is short: an inline and a shared one differ.
            (true, false) | (false, true) => false,
            (false, false) => Id::ptr_eq(self, other) || self.as_str() == other.as_str(),
        }
    }
}

impl Eq for Id {}

impl PartialEq<str> for Id {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Id {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Hash for Id {
    /// As the `str` hashes: a map keyed by `Id` is looked up by `&str` (`Borrow<str>`).
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl PartialOrd for Id {
    fn partial_cmp(&self, other: &Id) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Id {
    /// As the `str` orders: ordered sets of ids are persisted in this order.
    ///
    /// Two inline ids compare as two 16-byte numbers, without a call to `memcmp`: the bytes,
    /// padded with zeros, then the tag, whose low bits are the length. Padded strings order as
    /// the strings do, but for a string and itself followed by zeros, which the length orders.
    /// A room's members are kept ordered by read position and id, and most members of a
    /// room that keeps up share one position, so each read's move compares ids.
    fn cmp(&self, other: &Id) -> Ordering {
        if self.is_inline() && other.is_inline() {
            // SAFETY: both inline, so `inline` is the field written (`Id::new`).
            let (a, b) = unsafe { (self.0.inline, other.0.inline) };
            return u128::from_be_bytes(a).cmp(&u128::from_be_bytes(b));
        }
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl From<&str> for Id {
    fn from(s: &str) -> Id {
        Id::new(s)
    }
}

impl From<String> for Id {
    fn from(s: String) -> Id {
        Id::new(&s)
    }
}

impl From<&String> for Id {
    fn from(s: &String) -> Id {
        Id::new(s)
    }
}

impl From<std::borrow::Cow<'_, str>> for Id {
    fn from(s: std::borrow::Cow<'_, str>) -> Id {
        Id::new(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::hash_map::DefaultHasher;

    fn hash_of<T: Hash + ?Sized>(v: &T) -> u64 {
        let mut h = DefaultHasher::new();
        v.hash(&mut h);
        h.finish()
    }

    #[test]
    fn an_id_is_no_larger_than_a_shared_string_and_short_ones_are_inline() {
        assert_eq!(std::mem::size_of::<Id>(), std::mem::size_of::<Arc<str>>());
        assert!(Id::from("x".repeat(INLINE).as_str()).is_inline());
        assert!(!Id::from("x".repeat(INLINE + 1).as_str()).is_inline());
        assert!(Id::from("").is_inline());
    }

    proptest! {
        /// Ids of both kinds, on both sides of the bound, with multi-byte characters: each
        /// reads back as its string, and compares, orders and hashes as the strings do.
        #[test]
        fn an_id_is_its_string(a in "[a-zé0-9_-]{0,30}", b in "[a-zé0-9_-]{0,30}") {
            let (x, y) = (Id::from(a.as_str()), Id::from(b.clone()));
            prop_assert_eq!(x.as_str(), a.as_str());
            prop_assert_eq!(&*y, b.as_str());
            prop_assert_eq!(x.is_inline(), a.len() <= INLINE);
            prop_assert_eq!(x == y, a == b);
            // The same length, most often other bytes.
            let r: String = a.chars().rev().collect();
            let z = Id::from(r.as_str());
            prop_assert_eq!(x == z, a == r);
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            prop_assert_eq!(hash_of(&x), hash_of(a.as_str()));
            prop_assert_eq!(&x.clone(), &x);
            prop_assert_eq!(format!("{x}|{x:?}"), format!("{a}|{a:?}"));
        }
    }

    proptest! {
        /// Short ids over a few characters, zero among them, so that most pairs share a
        /// prefix or differ by trailing zeros alone: inline ids order as their strings.
        #[test]
        fn inline_ids_order_as_their_strings_also_with_trailing_zeros(
            a in "[ab\\x00\\x7fé]{0,7}",
            b in "[ab\\x00\\x7fé]{0,7}",
        ) {
            let (x, y) = (Id::from(a.as_str()), Id::from(b.as_str()));
            prop_assert!(x.is_inline() && y.is_inline());
            prop_assert_eq!(x.cmp(&y), a.cmp(&b), "{:?} against {:?}", a, b);
        }
    }

    #[test]
    fn an_inline_id_is_its_bytes_then_zeros_then_its_tag_at_every_length() {
        let text = "abcdefghijklmnopq";
        for n in 0..=INLINE {
            let mut expected = [0u8; 16];
            expected[..n].copy_from_slice(&text.as_bytes()[..n]);
            expected[TAG] = INLINE_FLAG | n as u8;
            // Taken from inside a longer string, as the decoder gives them: nothing past the
            // end is read into the id.
            assert_eq!(inline_bytes(&text.as_bytes()[..n]), expected, "length {n}");
            assert_eq!(
                inline_bytes(&text.as_bytes()[1..=n]),
                {
                    let mut e = expected;
                    e[..n].copy_from_slice(&text.as_bytes()[1..=n]);
                    e
                },
                "length {n}, offset 1"
            );
        }
    }

    #[test]
    fn a_map_keyed_by_ids_is_looked_up_by_str() {
        let long = "a-user-id-longer-than-fifteen-bytes";
        let map: std::collections::HashMap<Id, u32> = [(Id::from("u1"), 1), (Id::from(long), 2)].into_iter().collect();
        assert_eq!(map.get("u1"), Some(&1));
        assert_eq!(map.get(long), Some(&2));
        assert_eq!(map.get("u2"), None);
    }

    #[test]
    fn a_shared_id_counts_its_copies_and_lives_as_long_as_the_last() {
        let long = "m-".repeat(20);
        let a = Id::from(long.as_str());
        let copies: Vec<Id> = (0..3).map(|_| a.clone()).collect();
        assert_eq!(a.strong_count(), Some(4));
        assert!(copies.iter().all(|c| Id::ptr_eq(c, &a)));
        drop(a);
        let moved = std::thread::spawn(move || copies).join().unwrap();
        assert_eq!(moved[0].strong_count(), Some(3));
        let last = moved[2].clone();
        drop(moved);
        assert_eq!(last.strong_count(), Some(1));
        assert_eq!(last.as_str(), long);
        assert_eq!(Id::from("short").strong_count(), None);
    }
}
