import NIOCore

/// Runs a task's jobs on one NIO event loop: the edge runs each connection's task on its
/// channel's event loop.
///
/// Without a preference, a connection's task runs on Swift's global pool, so every request
/// crosses threads twice inside the edge: the event loop hands the parsed request to a pool
/// thread, and the response goes back to the event loop to be written. On the channel's own
/// loop both are local calls, and a reply from the AMQP consumer thread wakes the one thread
/// that will write it. The task must never block, which the edge's handlers do not: they wait
/// only by suspending.
final class EventLoopTaskExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}
