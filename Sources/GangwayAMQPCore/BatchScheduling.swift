#if canImport(Glibc)
import Glibc
#endif

/// Linux's `SCHED_BATCH` policy for the calling thread.
///
/// A batch thread is scheduled as fairly as any other, but the kernel does not let its
/// wake-ups preempt the thread that is running: it waits for that thread's slice, or runs at
/// once on an idle core. The edge's threads hand work to each other all the time (an HTTP
/// event loop wakes the publishing thread, the consuming thread wakes the event loops); under
/// load, with every core busy, each hand-off used to switch the waker out in mid-batch. As
/// batch threads, each finishes its batch first and the next one takes a larger one. On the
/// 2-core development machine this cut the edge's CPU per request/reply by about a third.
/// Without load, a woken thread finds an idle core and nothing changes.
public enum BatchScheduling {
    /// `SCHED_BATCH` from <sched.h>, which Glibc's Swift module leaves out (it is a GNU
    /// extension); its value is part of Linux's ABI.
    static let policy: Int32 = 3

    /// Makes the calling thread a batch thread; a no-op where the policy does not exist.
    /// - Returns: whether the policy applies now.
    @discardableResult
    public static func applyToCurrentThread() -> Bool {
        #if os(Linux)
        var parameters = sched_param(sched_priority: 0)
        return sched_setscheduler(0, policy, &parameters) == 0
        #else
        return false
        #endif
    }

    /// Whether the calling thread is a batch thread.
    public static var isCurrentThreadBatch: Bool {
        #if os(Linux)
        return sched_getscheduler(0) == policy
        #else
        return false
        #endif
    }
}
