//! queue.rs — a FIFO with a fixed capacity, for everything the host can
//! make the guest hold: the client's event queue and each subscriber's
//! queue in the kernel's hypercall service (docs/hcall-guest.md). When it
//! is full a new item is refused and counted; what is queued stays.

use alloc::collections::VecDeque;

/// A FIFO that never holds more than its capacity.
#[derive(Debug)]
pub struct BoundedQueue<T> {
    items: VecDeque<T>,
    capacity: usize,
    dropped: u64,
}

impl<T> BoundedQueue<T> {
    /// An empty queue that holds at most `capacity` items.
    pub fn new(capacity: usize) -> BoundedQueue<T> {
        BoundedQueue { items: VecDeque::new(), capacity, dropped: 0 }
    }

    /// Appends `item`, or drops it (counted) when the queue is full.
    /// Returns whether it was queued.
    pub fn push(&mut self, item: T) -> bool {
        if self.items.len() >= self.capacity {
            self.dropped += 1;
            return false;
        }
        self.items.push_back(item);
        true
    }

    /// The oldest item.
    pub fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Items refused because the queue was full, since it was made.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::BoundedQueue;

    #[test]
    fn refuses_past_capacity_and_counts() {
        let mut q = BoundedQueue::new(2);
        assert!(q.push(1) && q.push(2));
        assert!(!q.push(3));
        assert_eq!((q.len(), q.dropped()), (2, 1));
        assert_eq!(q.pop(), Some(1));
        assert!(q.push(4));
        assert_eq!([q.pop(), q.pop(), q.pop()], [Some(2), Some(4), None]);
        assert!(q.is_empty());
    }
}
