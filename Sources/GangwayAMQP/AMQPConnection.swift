import CRabbitMQ
import Foundation
import GangwayAMQPCore
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// One AMQP 0-9-1 connection over rabbitmq-c, owned by one dedicated thread.
///
/// rabbitmq-c is blocking and a connection is not thread-safe, so only the owner thread ever
/// calls into it. Other code talks to that thread through a command queue plus an eventfd
/// wake-up, and gets answers through continuations. The thread keeps the connection alive
/// (heartbeats), reconnects with backoff and jitter after any failure, declares the configured
/// topology again and re-subscribes every registered consumer. Work in flight when the
/// connection drops fails with a transient ``AMQPError``; nothing waits forever.
///
/// Channel 1 carries publishes (in confirm mode) and consumers; channel 2 carries passive queue
/// inspections, whose 404 closes the channel and must not disturb channel 1.
///
/// Run it as a `Service`, or call ``start()`` and ``shutdown()``.
public final class AMQPConnection: Sendable {
    public let configuration: AMQPConnectionConfiguration
    let logger: Logger
    let shared: Mutex<SharedState>
    let wakeFD: Int32

    public typealias DeliveryHandler = @Sendable (Delivery) -> Void

    struct Consumer: Sendable {
        var options: ConsumerOptions
        var handler: DeliveryHandler
        /// Registration order: consumers are (re)subscribed in it on every connect, except
        /// that those reading a stream from an offset come last (see `ConnectionOwner`).
        var order: Int
    }

    /// The order consumers are subscribed in on every connect: as they were registered, but
    /// those that read a stream from an offset last. Once one starts, the broker sends its
    /// backlog (up to its prefetch) ahead of the answers to the declarations and consumes that
    /// follow on this connection, and over a slow link those would time out behind it.
    static func subscriptionOrder(_ consumers: [String: Consumer]) -> [(key: String, value: Consumer)] {
        consumers.sorted {
            ($0.value.options.readsFromOffset ? 1 : 0, $0.value.order) < ($1.value.options.readsFromOffset ? 1 : 0, $1.value.order)
        }
    }

    /// Called on the owner thread when a publish is settled; must not block.
    /// (Its error is an ``AMQPError``, typed `any Error` so that callers' callbacks of that type,
    /// like `MessageBus`'s, are taken as they are instead of wrapped in another closure.)
    public typealias PublishCallback = @Sendable (Result<PublishOutcome, any Error>) -> Void

    /// Who hears about a publish's confirm.
    enum PublishToken: Sendable {
        case continuation(CheckedContinuation<PublishOutcome, any Error>)
        case callback(PublishCallback)
        case none

        func settle(_ result: Result<PublishOutcome, AMQPError>) {
            switch self {
            case .continuation(let c): c.resume(with: result.mapError { $0 as any Error })
            case .callback(let f): f(result.mapError { $0 })
            case .none: break
            }
        }
    }

    /// A message to publish and who hears about its confirm, in one box: a command is copied
    /// into the queue and destroyed on the owner thread, and a message's dozen strings, table
    /// and body would each be retained and released on the way (on two threads).
    final class Publication: Sendable {
        let message: OutboundMessage
        let token: PublishToken

        init(_ message: OutboundMessage, _ token: PublishToken) {
            self.message = message
            self.token = token
        }
    }

    enum Command: Sendable {
        case publish(Publication)
        case ack(deliveryTag: UInt64, multiple: Bool, generation: UInt64)
        case reject(deliveryTag: UInt64, requeue: Bool, generation: UInt64)
        case declare(Topology, CheckedContinuation<Void, any Error>)
        case unbind(BindingSpec, CheckedContinuation<Void, any Error>)
        case purgeQueue(String, CheckedContinuation<Void, any Error>)
        case inspectQueue(String, CheckedContinuation<QueueInfo?, any Error>)
        case startConsumer(tag: String)
        case cancelConsumer(tag: String)
    }

    struct SharedState: Sendable {
        var commands: [Command] = []
        /// The owner thread is (about to be) asleep in poll and must be woken by the eventfd.
        var sleeping = false
        var started = false
        var shutdownRequested = false
        var finished = false
        var connected = false
        var blocked = false
        var generation: UInt64 = 0
        var consumers: [String: Consumer] = [:]
        var nextConsumerTag = 0
        var finishWaiters: [CheckedContinuation<Void, Never>] = []
        var lastError: String?

        /// Marks the owner thread awake; returns whether it slept and must be woken.
        mutating func wakeOwner() -> Bool {
            guard sleeping else { return false }
            sleeping = false
            return true
        }
    }

    /// - Parameters:
    ///   - configuration: where to connect and what to declare.
    ///   - logger: receives connection life-cycle events at info and below.
    public init(configuration: AMQPConnectionConfiguration, logger: Logger) {
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "amqp.connection"] = "\(configuration.name)"
        self.logger = logger
        self.shared = Mutex(SharedState())
        self.wakeFD = gw_eventfd_create()
        precondition(wakeFD >= 0, "eventfd() failed")
    }

    deinit {
        close(wakeFD)
    }

    /// Whether the connection is open and its topology and consumers are in place.
    public var isConnected: Bool { shared.withLock { $0.connected } }

    /// The last connection error, for health reports.
    public var lastError: String? { shared.withLock { $0.lastError } }

    /// Starts the owner thread, which connects and keeps reconnecting until ``shutdown()``.
    public func start() {
        let first = shared.withLock { state -> Bool in
            defer { state.started = true }
            return !state.started
        }
        guard first else { return }
        let owner = ConnectionOwner(connection: self)
        let name = Self.threadName(configuration.name)
        let batch = configuration.batchScheduling
        let thread = Thread {
            // Foundation's `Thread.name` does not reach the kernel on Linux.
            _ = gw_set_thread_name(name)
            if batch { BatchScheduling.applyToCurrentThread() }
            owner.run()
        }
        thread.start()
    }

    /// The owner thread's name as the kernel keeps it (`top -H`, `perf`, `/proc/*/task/*/comm`):
    /// at most 15 bytes, or Linux refuses it and the thread keeps the name of the thread that
    /// started it. A longer connection name keeps its end, from a dot on when there is one
    /// (`worker.demo.echo` → `demo.echo`), which tells connections apart best.
    static func threadName(_ name: String) -> String {
        let bytes = Array(name.utf8)
        guard bytes.count > 15 else { return name }
        var tail = bytes.suffix(15)
        if let dot = tail.firstIndex(of: UInt8(ascii: ".")), dot + 1 < tail.endIndex {
            tail = tail[(dot + 1)...]
        }
        while let first = tail.first, first & 0xC0 == 0x80 { tail.removeFirst() }  // no split character
        return String(decoding: tail, as: UTF8.self)
    }

    /// Asks the owner thread to close the connection and waits until it has.
    public func shutdown() async {
        let started: Bool = shared.withLock { state in
            state.shutdownRequested = true
            return state.started && !state.finished
        }
        wake()
        guard started else { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = shared.withLock { state -> Bool in
                if state.finished { return true }
                state.finishWaiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    /// Waits until the connection is up, or the timeout passes.
    /// - Returns: whether it is connected.
    public func waitUntilConnected(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while !isConnected {
            if ContinuousClock.now >= deadline { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return true
    }

    // MARK: Publishing

    /// Publishes a message and waits for the broker's confirm.
    ///
    /// A mandatory message without a `message_id` gets one: returns are matched by it.
    /// - Returns: confirmed, returned (unroutable) or nacked.
    /// - Throws: ``AMQPError`` when not connected, blocked, or the connection drops first.
    public func publish(_ message: OutboundMessage) async throws -> PublishOutcome {
        try await withCheckedThrowingContinuation { continuation in
            if let error = enqueue(.publish(Publication(message, .continuation(continuation))), needsConnection: true) {
                continuation.resume(throwing: error)
            }
        }
    }

    /// Publishes and reports the confirm through a callback on the owner thread, so that a
    /// caller with something else to wait for (a reply) does not pay for a second suspension.
    /// - Throws: ``AMQPError`` at once when not connected or blocked; the callback is then
    ///   never called.
    public func publish(_ message: OutboundMessage, onSettled: @escaping PublishCallback) throws {
        if let error = enqueue(.publish(Publication(message, .callback(onSettled))), needsConnection: true) {
            throw error
        }
    }

    /// Publishes a marker into a stream this side reads (see `LogReplay`); `lost` is called,
    /// on the owner thread or at once, when it cannot be sent or the broker does not confirm it,
    /// so that the replay goes by quiet instead.
    public func publishLogMarker(_ message: OutboundMessage, ifLost lost: @escaping @Sendable () -> Void) {
        do {
            try publish(message) { outcome in
                if case .success(.confirmed) = outcome { return }
                lost()
            }
        } catch {
            lost()
        }
    }

    /// Publishes several messages, in order, with one hand-off to the owner thread (which sends
    /// them as one corked batch); each reports like ``publish(_:onSettled:)``.
    /// - Throws: ``AMQPError`` at once when not connected or blocked; then none is sent and no
    ///   callback is called.
    public func publish(batch: [(message: OutboundMessage, onSettled: PublishCallback)]) throws {
        if let error = enqueue(batch.map { .publish(Publication($0.message, .callback($0.onSettled))) }, needsConnection: true) {
            throw error
        }
    }

    /// Publishes without waiting for the confirm: for replies, whose loss the requester sees as
    /// a timeout anyway.
    /// - Throws: ``AMQPError`` when not connected.
    public func publishWithoutConfirm(_ message: OutboundMessage) throws {
        if let error = enqueue(.publish(Publication(message, .none)), needsConnection: true) {
            throw error
        }
    }

    // MARK: Consuming

    /// Registers a consumer; it is (re)subscribed on every connect until cancelled.
    ///
    /// The handler runs on the connection's owner thread: it must only hand the delivery on
    /// (resume a continuation, yield to a bounded stream), never block.
    /// - Returns: the consumer tag.
    @discardableResult
    public func consume(_ options: ConsumerOptions, handler: @escaping DeliveryHandler) -> String {
        let tag = shared.withLock { state -> String in
            state.nextConsumerTag += 1
            let tag = "\(configuration.name).\(state.nextConsumerTag)"
            state.consumers[tag] = Consumer(options: options, handler: handler, order: state.nextConsumerTag)
            return tag
        }
        _ = enqueue(.startConsumer(tag: tag), needsConnection: true)
        return tag
    }

    /// Stops a consumer; unacknowledged deliveries go back to the queue.
    public func cancelConsumer(tag: String) {
        shared.withLock { _ = $0.consumers.removeValue(forKey: tag) }
        _ = enqueue(.cancelConsumer(tag: tag), needsConnection: true)
    }

    /// Binds a consumer's queue with one more binding, now and after every reconnect (the
    /// binding becomes part of the consumer's options).
    /// - Throws: when the broker refused it or is unreachable; the binding is then still
    ///   recorded, and ``removeBinding(_:fromConsumer:)`` takes it back.
    public func addBinding(_ binding: BindingSpec, toConsumer tag: String) async throws {
        shared.withLock { state in
            if state.consumers[tag]?.options.bindings.contains(binding) == false {
                state.consumers[tag]?.options.bindings.append(binding)
            }
        }
        try await declare(Topology(bindings: [binding]))
    }

    /// Removes one of a consumer's bindings, now and for later reconnects.
    public func removeBinding(_ binding: BindingSpec, fromConsumer tag: String) async throws {
        shared.withLock { state in
            state.consumers[tag]?.options.bindings.removeAll { $0 == binding }
        }
        try await unbind(binding)
    }

    /// Acknowledges a delivery. Dropped if the delivery came on an earlier connection: the broker
    /// has requeued it already.
    public func ack(_ delivery: Delivery, multiple: Bool = false) {
        _ = enqueue(.ack(deliveryTag: delivery.deliveryTag, multiple: multiple, generation: delivery.generation), needsConnection: true)
    }

    /// Rejects a delivery; with `requeue: false` it is dead-lettered or dropped.
    public func reject(_ delivery: Delivery, requeue: Bool) {
        _ = enqueue(.reject(deliveryTag: delivery.deliveryTag, requeue: requeue, generation: delivery.generation), needsConnection: true)
    }

    // MARK: Topology

    /// Declares exchanges, queues and bindings now (idempotent). The configured topology is
    /// declared on every connect anyway; this is for one-off declarations.
    public func declare(_ topology: Topology) async throws {
        try await withCheckedThrowingContinuation { continuation in
            if let error = enqueue(.declare(topology, continuation), needsConnection: true) {
                continuation.resume(throwing: error)
            }
        }
    }

    /// Removes a binding.
    public func unbind(_ binding: BindingSpec) async throws {
        try await withCheckedThrowingContinuation { continuation in
            if let error = enqueue(.unbind(binding, continuation), needsConnection: true) {
                continuation.resume(throwing: error)
            }
        }
    }

    /// Removes every ready message from a queue.
    public func purgeQueue(_ name: String) async throws {
        try await withCheckedThrowingContinuation { continuation in
            if let error = enqueue(.purgeQueue(name, continuation), needsConnection: true) {
                continuation.resume(throwing: error)
            }
        }
    }

    /// Inspects a queue with a passive declaration.
    /// - Returns: message and consumer counts, or `nil` when the queue does not exist.
    public func inspectQueue(_ name: String) async throws -> QueueInfo? {
        try await withCheckedThrowingContinuation { continuation in
            if let error = enqueue(.inspectQueue(name, continuation), needsConnection: true) {
                continuation.resume(throwing: error)
            }
        }
    }

    // MARK: Queue to the owner thread

    /// Queues a command for the owner thread, waking it if it sleeps. Returns an error instead
    /// of queueing when the command cannot succeed now, so callers fail fast.
    private func enqueue(_ command: Command, needsConnection: Bool) -> AMQPError? {
        // Not through the batch's generic path: one command per call is the common case (every
        // publish, ack and reject), and appending a one-element collection goes element by
        // element through the generic sequence copy.
        let (error, wake): (AMQPError?, Bool) = shared.withLock { state in
            if let refusal = refusal(of: command, needsConnection: needsConnection, state: state) { return refusal }
            state.commands.append(command)
            return (nil, state.wakeOwner())
        }
        if wake { self.wake() }
        return error
    }

    /// Queues commands together (all or none), waking the owner thread at most once.
    private func enqueue(_ batch: some Collection<Command>, needsConnection: Bool) -> AMQPError? {
        guard let command = batch.first else { return nil }
        let (error, wake): (AMQPError?, Bool) = shared.withLock { state in
            // A batch is of one kind (publishes awaiting their confirms): its first decides.
            if let refusal = refusal(of: command, needsConnection: needsConnection, state: state) { return refusal }
            state.commands.append(contentsOf: batch)
            return (nil, state.wakeOwner())
        }
        if wake { self.wake() }
        return error
    }

    /// Why `command` is not queued now, as ``enqueue(_:needsConnection:)`` returns it (an error,
    /// or nil for a command dropped without one), or nil when it is queued.
    private func refusal(of command: Command, needsConnection: Bool, state: SharedState) -> (AMQPError?, Bool)? {
        if state.shutdownRequested { return (.shutdown, false) }
        if needsConnection && !state.connected {
            // Consumers and acks need no answer: consumers start on the next connect and
            // unacked deliveries are requeued by the broker.
            switch command {
            case .startConsumer, .cancelConsumer, .ack, .reject: return (nil, false)
            default: return (.notConnected(configuration.name), false)
            }
        }
        if command.waitsOnBroker && state.blocked && configuration.failFastWhenBlocked { return (.blocked, false) }
        return nil
    }

    func wake() {
        gw_eventfd_signal(wakeFD)
    }
}

extension AMQPConnection: Service {
    /// Runs the connection until graceful shutdown, then closes it.
    public func run() async throws {
        start()
        try? await gracefulShutdown()
        await shutdown()
    }
}

extension AMQPConnection.Command {
    /// Someone waits for the broker's answer to it: a confirm, or the reply to an RPC. Such
    /// commands fail at once on a connection the broker is blocking, when they are queued and,
    /// if the notice came after that, when their turn comes (``AMQPConnectionConfiguration/failFastWhenBlocked``).
    var waitsOnBroker: Bool {
        switch self {
        case .publish(let publication): if case .none = publication.token { return false } else { return true }
        case .ack, .reject, .startConsumer, .cancelConsumer: return false
        case .declare, .unbind, .purgeQueue, .inspectQueue: return true
        }
    }

    /// Only writes frames, waiting for no answer on the spot (a confirm comes later, if at all).
    var isOneWay: Bool {
        switch self {
        case .publish, .ack, .reject: return true
        case .declare, .unbind, .purgeQueue, .inspectQueue, .startConsumer, .cancelConsumer: return false
        }
    }
}
