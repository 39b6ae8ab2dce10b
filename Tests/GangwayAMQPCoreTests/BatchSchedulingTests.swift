import Foundation
import GangwayAMQPCore
import Synchronization
import Testing

@Suite("Batch scheduling for the edge's threads")
struct BatchSchedulingTests {
    @Test("a thread made a batch thread reports the policy; another thread keeps its own")
    func appliesToTheCallingThreadOnly() async throws {
        #if os(Linux)
        let seen = Mutex<(applied: Bool, batch: Bool)?>(nil)
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            let applied = BatchScheduling.applyToCurrentThread()
            seen.withLock { $0 = (applied, BatchScheduling.isCurrentThreadBatch) }
            done.signal()
        }
        thread.start()
        done.wait()
        let result = try #require(seen.withLock { $0 })
        #expect(result.applied && result.batch)
        #expect(!BatchScheduling.isCurrentThreadBatch, "the test's own thread is not changed")
        #endif
    }
}
