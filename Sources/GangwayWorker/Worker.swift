import GangwayAMQP
import GangwayAMQPCore
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// A request/reply worker: consumes a queue, runs a handler per message, publishes the reply to
/// the message's `reply_to`, then acknowledges.
///
/// Concurrency equals the prefetch: the broker never has more than `prefetch` unacknowledged
/// messages out to this worker, so at most that many handlers run. A handler that throws
/// produces a 500 problem reply; a message past its `x-deadline` is acknowledged and dropped
/// unprocessed, because its requester has already answered 504. A worker that dies before
/// acking gets its messages redelivered to another worker.
///
/// Graceful shutdown stops consuming and lets the handlers running finish. If the task running
/// the worker is cancelled meanwhile (a shutdown that took too long), the handlers are
/// cancelled: a request or job they did not finish is left unacknowledged, so the broker gives
/// it to another worker, and a stream ends with an error part. The same happens to the handlers
/// of what a connection delivered when that connection is lost, since the broker gives those
/// messages out again.
public struct Worker: Service {
    public struct Configuration: Sendable {
        public var url: AMQPURL
        public var queue: String
        public var prefetch: UInt16
        /// Declared on every (re)connect, e.g. the shipped topology.
        public var topology: Topology
        public var name: String
        /// Sent as `x-replier` on every reply, so that a gather can tell repliers apart.
        public var replierID: String?
        /// Where each handler starts running; see ``HandlerStart``.
        public var handlerStart: HandlerStart
        /// Run the connection's thread as a batch thread (``BatchScheduling``): it hands every
        /// message to a handler and takes every reply back, and under load a batch thread
        /// finishes its round before the threads it woke take the core.
        public var batchScheduling: Bool

        public init(
            url: AMQPURL,
            queue: String,
            prefetch: UInt16 = 64,
            topology: Topology = Topology(),
            name: String? = nil,
            replierID: String? = nil,
            handlerStart: HandlerStart = .task,
            batchScheduling: Bool = true
        ) {
            self.url = url
            self.queue = queue
            self.prefetch = prefetch
            self.topology = topology
            self.name = name ?? "worker.\(queue)"
            self.replierID = replierID
            self.handlerStart = handlerStart
            self.batchScheduling = batchScheduling
        }
    }

    /// Where a delivery's handler starts running.
    public struct HandlerStart: Sendable, Hashable, CustomStringConvertible {
        fileprivate enum Base: Hashable {
            case task
            case immediate
        }

        fileprivate let base: Base

        /// In a new task on Swift's global executor (the default): handlers run in parallel
        /// on every core, whatever they do.
        public static let task = HandlerStart(base: .task)

        /// On the connection's own thread, from the moment the message arrives until the
        /// handler first suspends; from then on as a task on the global executor. A handler
        /// that answers without suspending costs no thread wake-up at all, which makes a
        /// lightly loaded worker markedly cheaper per message. Only for handlers that never
        /// block and compute little before their first `await`: until then the connection
        /// reads no message, sends no reply and acknowledges nothing, and such handlers run
        /// one after the other instead of in parallel.
        public static let immediate = HandlerStart(base: .immediate)

        /// Every choice, for command-line parsers and help.
        public static let all: [HandlerStart] = [.immediate, .task]

        public var description: String {
            switch base {
            case .task: "task"
            case .immediate: "immediate"
            }
        }
    }

    public typealias Handler = @Sendable (WorkerRequest) async throws -> WorkerReply
    /// Answers in parts through the writer; returning ends the stream. Cancelled (as a Swift
    /// task) when the client goes away.
    public typealias StreamHandler = @Sendable (WorkerRequest, PartWriter) async throws -> Void

    /// Runs a job: report with the context; return the result (JSON) or throw. Events
    /// `job.<id>.progress|log|done|failed` go out with `x-seq` 1, 2, 3…; the job is acked only
    /// after its final event is confirmed, so a worker that dies mid-job has it redelivered.
    public typealias JobHandler = @Sendable (WorkerRequest, JobContext) async throws -> ByteBuffer

    enum Kind: Sendable {
        case reply(Handler)
        case stream(StreamHandler)
        case job(JobHandler)
    }

    public let configuration: Configuration
    private let connection: AMQPConnection
    private let kind: Kind
    private let logger: Logger
    private let inFlight = InFlight()
    /// How far this worker has read the cancel log since it last connected.
    private let cancelReplay: LogReplay
    /// Replies published whose confirm (and so the request's ack) has not come yet.
    private let unsettledReplies = Counter()
    private let handlers: RunningHandlers

    /// A worker that answers each request with one reply.
    public init(configuration: Configuration, logger: Logger, handler: @escaping Handler) {
        self.init(configuration: configuration, logger: logger, kind: .reply(handler))
    }

    /// A worker that runs jobs and reports on them as events.
    public init(configuration: Configuration, logger: Logger, jobHandler: @escaping JobHandler) {
        self.init(configuration: configuration, logger: logger, kind: .job(jobHandler))
    }

    /// A worker that answers each request with a stream of parts.
    public init(configuration: Configuration, logger: Logger, streamHandler: @escaping StreamHandler) {
        self.init(configuration: configuration, logger: logger, kind: .stream(streamHandler))
    }

    private init(configuration: Configuration, logger: Logger, kind: Kind) {
        self.configuration = configuration
        self.kind = kind
        var logger = logger
        logger[metadataKey: "worker.queue"] = "\(configuration.queue)"
        self.logger = logger
        let handlers = RunningHandlers()
        self.handlers = handlers
        let cancelReplay = LogReplay(quietNanoseconds: 300_000_000)
        self.cancelReplay = cancelReplay
        let isJobWorker = if case .job = kind { true } else { false }
        let ownConnection = LateBound<AMQPConnection?>(nil)
        self.connection = AMQPConnection(
            configuration: .init(url: configuration.url, name: configuration.name, topology: configuration.topology.ensuring(WireContract.cancelExchange).ensuring(WireContract.eventsExchangeSpec),
                onStateChange: { up in
                    // What the lost connection delivered cannot be acked any more: the broker
                    // gives it out again, possibly to this worker once it reconnects. Finishing
                    // it here as well would run the request or job twice at once; it is
                    // interrupted, as on a shutdown that took too long.
                    if !up { handlers.interruptRunning() }
                    // A job worker reads the cancel log from its start again on each
                    // connection; the marker it publishes now tells when it has read up to now.
                    guard isJobWorker, up, let connection = ownConnection.value else {
                        cancelReplay.restarted(up)
                        return
                    }
                    let marker = LogReplay.newMarker(prefix: configuration.name)
                    cancelReplay.restarted(true, marker: marker)
                    connection.publishLogMarker(WireContract.cancelLogMarker(marker)) { cancelReplay.markerLost(marker) }
                },
                batchScheduling: configuration.batchScheduling,
                // Replies and job events wait out a resource alarm: failed, they would leave
                // their requests unacknowledged until the connection closes.
                failFastWhenBlocked: false
            ),
            logger: logger
        )
        ownConnection.value = connection
    }

    public func run() async throws {
        connection.start()
        let handlers = self.handlers
        let immediate = configuration.handlerStart == .immediate
        let tag = connection.consume(.init(queue: configuration.queue, prefetch: configuration.prefetch)) { delivery in
            handlers.start(immediately: immediate) { await self.process(delivery) }
        }
        // Cancel messages reach every worker; each cancels the stream or job if it holds it,
        // and a job worker remembers the others, so that a job cancelled while it waited in its
        // queue is not started when it comes.
        let inFlight = self.inFlight
        let connection = self.connection
        if case .job = kind {
            // Through the cancel log, read from its start on every connection: a job cancelled
            // while this worker was not running or not connected is not started either.
            let cancelReplay = self.cancelReplay
            connection.consume(
                .init(
                    queue: WireContract.cancelLogQueue.name,
                    declare: WireContract.cancelLogQueue,
                    bindings: [WireContract.cancelLogBinding],
                    prefetch: 1000,
                    arguments: ["x-stream-offset": "first"],
                    maxBodyBytes: 4096
                )
            ) { delivery in
                cancelReplay.delivered(marker: delivery.properties.headers[WireContract.Header.logMarker]?.stringValue)
                if let cancel = WireContract.cancelled(delivery.properties) {
                    inFlight.cancel(cancel.id, at: cancel.at)
                }
                connection.ack(delivery)
            }
        } else {
            // A stream's cancel matters only while it runs: a queue of this worker's own, so that
            // request and stream workers do not depend on the broker's stream queues.
            let cancelQueue = "gangway.cancel.\(configuration.name).\(String(UInt64.random(in: 0 ... .max), radix: 36))"
            connection.consume(
                .init(
                    queue: cancelQueue,
                    declare: QueueSpec(name: cancelQueue, durable: false, exclusive: true, autoDelete: true),
                    bindings: [BindingSpec(source: WireContract.cancelExchange.name, destination: cancelQueue, routingKey: "")],
                    prefetch: 0,
                    autoAck: true,
                    maxBodyBytes: 4096
                )
            ) { delivery in
                if let cancel = WireContract.cancelled(delivery.properties) {
                    inFlight.cancel(cancel.id, at: cancel.at)
                }
            }
        }
        logger.info("worker.started", metadata: ["worker.prefetch": "\(configuration.prefetch)"])
        // Until shutdown, the consumer's callback runs the handlers. Then: stop taking new
        // messages and let those already here finish, or cancel them if this task is cancelled.
        try? await gracefulShutdown()
        connection.cancelConsumer(tag: tag)
        await withTaskCancellationHandler {
            await handlers.waitUntilIdle()
        } onCancel: {
            handlers.cancelAll()
        }
        // Handlers are done; their replies' confirms ack the requests. Closing earlier would
        // have the broker redeliver requests that were answered.
        let settleBy = ContinuousClock.now + .seconds(5)
        while unsettledReplies.value.load(ordering: .relaxed) > 0 && ContinuousClock.now < settleBy {
            try? await Task.sleep(for: .milliseconds(5))
        }
        await connection.shutdown()
        logger.info("worker.stopped")
    }

    private func process(_ delivery: Delivery) async {
        let request = WorkerRequest(delivery: delivery)
        if let deadline = request.deadlineEpochMilliseconds, deadline < WireContract.epochMilliseconds() {
            logger.debug("worker.expired", metadata: ["request.id": "\(request.requestID)"])
            connection.ack(delivery)
            return
        }
        let handler: Handler
        switch kind {
        case .reply(let h):
            handler = h
        case .stream(let h):
            await stream(delivery, request: request, handler: h)
            return
        case .job(let h):
            await job(delivery, request: request, handler: h)
            return
        }
        var reply: WorkerReply
        do {
            reply = try await handler(request)
        } catch where Task.isCancelled {
            // The worker is stopping, or lost the connection that delivered the request, and
            // interrupted its handlers: no reply and no ack, so the broker gives the request to
            // another worker (or this one again) once that connection is closed.
            logger.info("worker.interrupted", metadata: ["request.id": "\(request.requestID)"])
            return
        } catch {
            logger.warning("worker.handler.failed", metadata: ["request.id": "\(request.requestID)", "error": "\(error)"])
            reply = .problem(status: 500, title: "Internal Server Error", detail: "the worker failed to handle the request")
        }
        guard let replyTo = delivery.properties.replyTo, !replyTo.isEmpty else {
            connection.ack(delivery)
            return
        }
        var headers: AMQPTable = [:]
        // Sized once for the entries it will hold, rather than grown as they are added.
        headers.reserveCapacity(reply.headers.count + 2)
        headers[WireContract.Header.status] = .int(Int64(reply.status))
        if let replier = configuration.replierID { headers[WireContract.Header.replier] = .string(replier) }
        for (name, value) in reply.headers {
            headers[WireContract.Header.headerPrefix + name.lowercased()] = .string(value)
        }
        let message = OutboundMessage(
            exchange: "",
            routingKey: replyTo,
            properties: AMQPProperties(
                contentType: reply.contentType,
                headers: headers,
                deliveryMode: 1,
                correlationID: delivery.properties.correlationID,
                appID: configuration.name
            ),
            body: reply.body
        )
        // Acked from the confirm, on the connection's own thread: the handler's task is done
        // and nothing needs to wake up for it. Not acked when the reply could not be sent, so
        // the broker redelivers the request once this connection is gone.
        let connection = self.connection
        let logger = self.logger
        let requestID = request.requestID
        let unsettled = self.unsettledReplies
        unsettled.value.add(1, ordering: .relaxed)
        do {
            try connection.publish(message) { result in
                defer { unsettled.value.subtract(1, ordering: .relaxed) }
                switch result {
                case .success(.confirmed), .success(.returned):
                    connection.ack(delivery)
                case .success(.nacked):
                    // The broker lost the reply; the requester answers 504 at its deadline.
                    logger.warning("worker.reply.nacked", metadata: ["request.id": "\(requestID)"])
                    connection.ack(delivery)
                case .failure(let error):
                    logger.warning("worker.reply.failed", metadata: ["request.id": "\(requestID)", "error": "\(error)"])
                }
            }
        } catch {
            unsettled.value.subtract(1, ordering: .relaxed)
            logger.warning("worker.reply.failed", metadata: ["request.id": "\(request.requestID)", "error": "\(error)"])
        }
    }

    private func stream(_ delivery: Delivery, request: WorkerRequest, handler: @escaping StreamHandler) async {
        guard let replyTo = delivery.properties.replyTo, !replyTo.isEmpty else {
            connection.ack(delivery)
            return
        }
        let writer = PartWriter(connection: connection, replyTo: replyTo, correlationID: delivery.properties.correlationID, appID: configuration.name)
        let id = delivery.properties.correlationID ?? ""
        // A task of its own so that a cancel message can cancel it; awaited right here, so it
        // never outlives this delivery.
        let task = Task { try await handler(request, writer) }
        let cancelRequest = inFlight.insert(id, task)
        defer { inFlight.remove(id, cancelRequest) }
        do {
            try await withTaskCancellationHandler {
                try await task.value
            } onCancel: {
                task.cancel()
            }
            try await writer.finishIfNeeded()
            connection.ack(delivery)
        } catch where task.isCancelled && !cancelRequest.requested {
            // The worker is stopping (or lost its connection, and then this part cannot go
            // either): the parts sent cannot be taken back, so the client is told the stream
            // broke rather than left waiting for its idle timeout.
            logger.info("worker.interrupted", metadata: ["request.id": "\(request.requestID)", "stream.parts": "\(writer.count)"])
            if !writer.isFinished { try? await writer.fail("the worker stopped before the stream ended") }
            connection.ack(delivery)
        } catch where task.isCancelled {
            logger.info("worker.cancelled", metadata: ["request.id": "\(request.requestID)", "stream.parts": "\(writer.count)"])
            connection.ack(delivery)
        } catch {
            logger.warning("worker.handler.failed", metadata: ["request.id": "\(request.requestID)", "error": "\(error)"])
            if !writer.isFinished { try? await writer.fail("the worker failed while streaming") }
            connection.ack(delivery)
        }
    }
}

extension Worker {
    private func job(_ delivery: Delivery, request: WorkerRequest, handler: @escaping JobHandler) async {
        let id = request.header(WireContract.Header.jobID) ?? delivery.properties.messageID ?? ""
        let context = JobContext(jobID: id, connection: connection, appID: configuration.name, echoed: WireContract.echoedJobHeaders(delivery.properties.headers), logger: logger)
        // Cancelled while it waited in the queue: report it cancelled without running it. A
        // cancel sent while this worker was not running or not connected comes from the cancel
        // log, which it reads again from its start on each connection: caught up first.
        if !cancelReplay.isSettled(), !(await cancelReplay.awaitSettled(limit: .seconds(3))) {
            logger.warning("worker.cancel_log.behind", metadata: ["job.id": "\(id)"])
        }
        if inFlight.takeEarlyCancel(id) {
            logger.info("worker.cancelled.before.start", metadata: ["job.id": "\(id)"])
            await finish(delivery, context, kind: "cancelled", #"{"reason":"cancelled on request before it started"}"#)
            return
        }
        // A task of its own so that `DELETE /v1/jobs/{id}` (a cancel message) can cancel it;
        // awaited right here, so it never outlives this delivery.
        let task = Task { try await handler(request, context) }
        let cancelRequest = inFlight.insert(id, task)
        defer { inFlight.remove(id, cancelRequest) }
        let result: ByteBuffer
        do {
            result = try await withTaskCancellationHandler {
                try await task.value
            } onCancel: {
                task.cancel()
            }
        } catch where task.isCancelled && !cancelRequest.requested {
            // The worker is stopping, or lost the connection that delivered the job, and nobody
            // cancelled it: no final event and no ack, so the broker gives the job to another
            // worker (or this one again) once that connection is closed.
            logger.info("worker.job.interrupted", metadata: ["job.id": "\(id)"])
            return
        } catch where task.isCancelled {
            logger.info("worker.cancelled", metadata: ["job.id": "\(id)"])
            await finish(delivery, context, kind: "cancelled", #"{"reason":"cancelled on request"}"#)
            return
        } catch {
            logger.warning("worker.job.failed", metadata: ["job.id": "\(id)", "error": "\(error)"])
            await finish(delivery, context, kind: "failed", #"{"error":\#(JobContext.quote("\(error)"))}"#)
            return
        }
        // The handler succeeded: a `done` that cannot be reported (the connection lost, or the
        // worker stopping while the broker nacks it) leaves the job unacked to come back, and is
        // never turned into a `failed` report of a job that did not fail.
        await finish(delivery, context, kind: "done", String(buffer: result).isEmpty ? "null" : String(buffer: result))
    }

    /// Reports the final event, then acks; unacked if the report fails, so the job comes back.
    private func finish(_ delivery: Delivery, _ context: JobContext, kind: String, _ json: String) async {
        do {
            try await context.emit(kind, json)
            connection.ack(delivery)
        } catch {
            logger.warning("worker.job.report.failed", metadata: ["job.id": "\(context.jobID)", "error": "\(error)"])
        }
    }
}

/// The handlers in progress. Each delivery's handler is started as a task straight from the
/// connection's thread: handing deliveries through a stream to a loop task that adds children
/// to a task group woke two pool threads per message, which cost lightly loaded workers (the
/// legs of an aggregate) about a quarter of their CPU time. Shutdown waits for them and
/// cancels them when it is itself cancelled, as a task group would.
final class RunningHandlers: Sendable {
    private struct State {
        var next: UInt64 = 0
        /// Handlers started and not finished, whether or not their task is in `tasks` yet.
        var running = 0
        var tasks: [UInt64: Task<Void, Never>] = [:]
        /// Handlers that finished before their task was put in `tasks`.
        var finishedEarly: Set<UInt64> = []
        var idleWaiters: [CheckedContinuation<Void, Never>] = []
        var cancelled = false
        /// How many times the handlers running were interrupted (``interruptRunning()``).
        var interruptions: UInt64 = 0
    }

    private let state = Mutex(State())

    /// Starts `body` as a task, or runs it on the calling thread up to its first suspension
    /// when `immediately`. The task is made outside the lock: making it wakes a pool thread,
    /// and a short handler would otherwise finish there and wait for this lock (an immediate
    /// one finishes before `start` returns, and must not find the lock taken either).
    func start(immediately: Bool = false, _ body: @escaping @Sendable () async -> Void) {
        let (id, cancelledAlready, interruptions) = state.withLock { s -> (UInt64, Bool, UInt64) in
            s.running += 1
            defer { s.next += 1 }
            return (s.next, s.cancelled, s.interruptions)
        }
        let run: @Sendable () async -> Void = {
            // Started after cancelAll: cancelled before the handler runs, not some time after.
            if cancelledAlready { withUnsafeCurrentTask { $0?.cancel() } }
            await body()
            self.finished(id)
        }
        let task = immediately ? Task.immediate(operation: run) : Task(operation: run)
        let cancel = state.withLock { s -> Bool in
            if s.finishedEarly.remove(id) != nil { return false }
            s.tasks[id] = task
            // Interrupted between the two locks: it was running then too.
            return s.cancelled || s.interruptions != interruptions
        }
        if cancel { task.cancel() }
    }

    private func finished(_ id: UInt64) {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            if s.tasks.removeValue(forKey: id) == nil { s.finishedEarly.insert(id) }
            s.running -= 1
            guard s.running == 0 else { return [] }
            defer { s.idleWaiters = [] }
            return s.idleWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once no handler runs.
    func waitUntilIdle() async {
        await withCheckedContinuation { continuation in
            let idle = state.withLock { s -> Bool in
                if s.running == 0 { return true }
                s.idleWaiters.append(continuation)
                return false
            }
            if idle { continuation.resume() }
        }
    }

    /// Cancels the handlers running and any started from now on.
    func cancelAll() {
        let tasks = state.withLock { s -> [Task<Void, Never>] in
            s.cancelled = true
            return Array(s.tasks.values)
        }
        for task in tasks { task.cancel() }
    }

    /// Cancels the handlers running now; those started afterwards run as usual.
    func interruptRunning() {
        let tasks = state.withLock { s -> [Task<Void, Never>] in
            s.interruptions += 1
            return Array(s.tasks.values)
        }
        for task in tasks { task.cancel() }
    }

    var count: Int { state.withLock { $0.running } }

    /// Entries kept for running handlers (for tests: none are left once idle).
    var bookkeeping: Int { state.withLock { $0.tasks.count + $0.finishedEarly.count } }
}

/// Whether a cancel message asked for a request or job to stop, as opposed to the worker
/// stopping and cancelling what it runs.
final class CancelRequest: Sendable {
    private let flag = Atomic(false)

    var requested: Bool { flag.load(ordering: .acquiring) }

    func mark() { flag.store(true, ordering: .releasing) }
}

/// A count shared by a worker's tasks and its connection's thread.
final class Counter: Sendable {
    let value = Atomic(0)
}

/// Streams and jobs in progress by correlation or job id, so that a cancel message can reach
/// them; and cancels that came for an id not (yet) here, so that a job cancelled while it waited
/// in its queue is not run when it arrives (bounded: the newest 10,000, for an hour).
final class InFlight: Sendable {
    struct State {
        /// Each running task's cancel, and the flag that tells its own entry from a later one
        /// under the same id (a redelivery that started before the interrupted run ended).
        var tasks: [String: (request: CancelRequest, cancel: @Sendable () -> Void)] = [:]
        var early: [String: Int64] = [:]
        var earlyOrder: [String] = []
    }

    private let state = Mutex(State())
    static let earlyLimit = 10_000
    static let earlyMilliseconds = WireContract.cancelMilliseconds

    /// Registers a task; cancels it at once if a cancel came for it in the meantime.
    /// - Returns: the flag that says, once the task is cancelled, whether a cancel message did it
    ///   (and not the worker stopping).
    func insert<Success: Sendable>(_ id: String, _ task: Task<Success, any Error>) -> CancelRequest {
        let request = CancelRequest()
        let cancelled = state.withLock { s -> Bool in
            s.tasks[id] = (request, {
                request.mark()
                task.cancel()
            })
            return s.early.removeValue(forKey: id) != nil
        }
        if cancelled {
            request.mark()
            task.cancel()
        }
        return request
    }

    /// Forgets the task that `request` was made for (and not a later one under the same id).
    func remove(_ id: String, _ request: CancelRequest) {
        state.withLock { s in
            if s.tasks[id]?.request === request { s.tasks[id] = nil }
        }
    }

    /// A cancel message for `id`, sent at `at` (epoch ms; now when it does not say). One older
    /// than ``earlyMilliseconds``, read again from the cancel log, is ignored.
    func cancel(_ id: String, at: Int64? = nil) {
        let now = WireContract.epochMilliseconds()
        let at = at ?? now
        guard now - at <= Self.earlyMilliseconds else { return }
        let running: (@Sendable () -> Void)? = state.withLock { s in
            if let running = s.tasks[id] { return running.cancel }
            if s.early.updateValue(at, forKey: id) == nil { s.earlyOrder.append(id) }
            while s.earlyOrder.count > Self.earlyLimit || (s.earlyOrder.first.flatMap { s.early[$0] }.map { now - $0 > Self.earlyMilliseconds } ?? false) {
                s.early[s.earlyOrder.removeFirst()] = nil
            }
            return nil
        }
        running?()
    }

    /// Whether a cancel came for `id` before it started (and forgets it).
    func takeEarlyCancel(_ id: String) -> Bool {
        let now = WireContract.epochMilliseconds()
        return state.withLock { s in
            guard let at = s.early.removeValue(forKey: id) else { return false }
            return now - at <= Self.earlyMilliseconds
        }
    }
}
