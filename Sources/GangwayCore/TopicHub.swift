import DequeModule
import GangwayAMQPCore
import NIOCore
import Synchronization

/// Binds and unbinds the edge's topic queue; the executable wires it to the broker.
public protocol TopicBinder: Sendable {
    func bind(_ pattern: TopicPattern) async throws
    func unbind(_ pattern: TopicPattern) async throws
}

/// Topic subscriptions of one edge: the broker filters, the hub fans out.
///
/// The edge's topic queue is bound once per pattern that some subscriber follows (reference
/// counted); a pattern nobody follows any more stays bound for ``Configuration/linger`` so that
/// a client that reconnects resumes without a gap, and is then unbound. Each event the queue
/// brings is encoded once and pushed to the ``SSEOutbox`` of every subscriber whose patterns
/// match it.
///
/// A bounded replay history (count, bytes and age) serves `Last-Event-ID`: a client resumes after the
/// event it names when that event is still kept and every one of its patterns has been bound
/// since; otherwise it gets an explicit reset instead of a silent gap.
public final class TopicHub: Sendable {
    public struct Configuration: Sendable {
        /// Events kept for resumption.
        public var historyLimit: Int
        /// Bytes of encoded events kept for resumption (the newest event is kept whatever its size).
        public var historyByteLimit: Int
        /// Milliseconds an event is kept for resumption.
        public var historyAgeMilliseconds: Int64
        /// Milliseconds a pattern stays bound after its last subscriber left.
        public var lingerMilliseconds: Int64

        public static let defaultHistoryByteLimit = 64 << 20

        public init(historyLimit: Int = 10_000, historyByteLimit: Int = Configuration.defaultHistoryByteLimit, historyAgeMilliseconds: Int64 = 300_000, lingerMilliseconds: Int64 = 30_000) {
            self.historyLimit = historyLimit
            self.historyByteLimit = historyByteLimit
            self.historyAgeMilliseconds = historyAgeMilliseconds
            self.lingerMilliseconds = lingerMilliseconds
        }
    }

    /// A subscription's start: the events to replay and whether history was lost.
    public struct Subscription: Sendable {
        public var id: Int
        /// The client's Last-Event-ID is not kept or predates a binding: events may be missing.
        public var reset: Bool
        public var replay: [ByteBuffer]
    }

    struct Entry {
        var seq: Int
        var id: String
        var topic: String
        var time: Int64
        var encoded: ByteBuffer
    }

    struct Binding {
        var pattern: TopicPattern
        var subscribers: Set<Int> = [] {
            didSet {
                plan = nil
                generation &+= 1
            }
        }
        /// The subscribers' outboxes grouped by loop, kept from one event to the next while
        /// the subscribers stay the same; `generation` counts their changes.
        var plan: SSEOutbox.FanOutPlan?
        var generation = 0
        /// Subscribers waiting for the binding to be made.
        var pending = 0
        var bound = false
        /// The first history sequence number that arrived with the binding in place.
        var boundSince = Int.max
        var idleSince: Int64?
    }

    struct State {
        var history: Deque<Entry> = []
        var historyIndex: [String: Int] = [:]
        /// The bytes of the encoded events in `history`.
        var historyBytes = 0

        /// Forgets the oldest event of the replay history.
        mutating func dropOldestEntry() {
            let gone = history.removeFirst()
            historyIndex[gone.id] = nil
            historyBytes -= gone.encoded.readableBytes
        }
        var nextSeq = 1
        var bindings: [String: Binding] = [:]
        var subscribers: [Int: SSEOutbox] = [:]
        var nextSubscriber = 0
    }

    enum Operation: Sendable {
        /// Bind a pattern, then resume the waiter registered under the id.
        case bind(TopicPattern, Int)
        case sweep
    }

    /// Subscribers waiting for a bind, by id; failed when ``run()`` ends, so none waits forever.
    struct BindWaiters {
        var waiting: [Int: CheckedContinuation<Void, any Error>] = [:]
        var nextID = 0
        var stopped = false
    }

    public let configuration: Configuration
    let binder: any TopicBinder
    let instanceID: String
    private let state = Mutex(State())
    // Bind and unbind run one at a time, in order, on ``run()``'s task: an unbind can never
    // overtake the bind of a subscriber that came back.
    private let operations: AsyncStream<Operation>
    private let operationsContinuation: AsyncStream<Operation>.Continuation
    private let bindWaiters = Mutex(BindWaiters())

    public init(binder: any TopicBinder, instanceID: String, configuration: Configuration = .init()) {
        self.binder = binder
        self.instanceID = instanceID
        self.configuration = configuration
        (operations, operationsContinuation) = AsyncStream.makeStream(of: Operation.self)
    }

    /// Patterns bound now.
    public var boundPatterns: [String] {
        state.withLock { $0.bindings.values.filter(\.bound).map(\.pattern.text).sorted() }
    }

    public var subscriberCount: Int { state.withLock { $0.subscribers.count } }

    /// Processes binds and unbinds until cancelled; sweeps lingering patterns every second.
    public func run() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [operationsContinuation] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(1))
                    operationsContinuation.yield(.sweep)
                }
            }
            for await operation in operations {
                if Task.isCancelled { break }
                switch operation {
                case .bind(let pattern, let id):
                    guard let continuation = bindWaiters.withLock({ $0.waiting.removeValue(forKey: id) }) else { continue }
                    await bindNow(pattern, continuation)
                case .sweep:
                    await sweep(now: WireContract.epochMilliseconds())
                }
            }
            group.cancelAll()
        }
        operationsContinuation.finish()
        let abandoned = bindWaiters.withLock { w in
            w.stopped = true
            defer { w.waiting = [:] }
            return Array(w.waiting.values)
        }
        for continuation in abandoned { continuation.resume(throwing: CancellationError()) }
    }

    private func bindNow(_ pattern: TopicPattern, _ continuation: CheckedContinuation<Void, any Error>) async {
        if state.withLock({ $0.bindings[pattern.text]?.bound ?? false }) {
            continuation.resume()
            return
        }
        do {
            try await binder.bind(pattern)
            state.withLock { s in
                if s.bindings[pattern.text] == nil { s.bindings[pattern.text] = Binding(pattern: pattern, idleSince: WireContract.epochMilliseconds()) }
                s.bindings[pattern.text]?.bound = true
                s.bindings[pattern.text]?.boundSince = s.nextSeq
            }
            continuation.resume()
        } catch {
            continuation.resume(throwing: error)
        }
    }

    /// Unbinds patterns idle past the linger time and forgets history past its age.
    func sweep(now: Int64) async {
        let expired: [TopicPattern] = state.withLock { s in
            while let first = s.history.first, now - first.time > configuration.historyAgeMilliseconds {
                s.dropOldestEntry()
            }
            var expired: [TopicPattern] = []
            for (key, binding) in s.bindings where binding.subscribers.isEmpty && binding.pending == 0 {
                guard let idle = binding.idleSince, now - idle >= configuration.lingerMilliseconds else { continue }
                s.bindings[key] = nil
                if binding.bound { expired.append(binding.pattern) }
            }
            return expired
        }
        for pattern in expired {
            try? await binder.unbind(pattern)
        }
    }

    /// Subscribes `outbox` to events matching any of `patterns`, binding what is not bound yet.
    /// - Parameter lastEventID: the id of the last event the client saw, to resume after.
    /// - Throws: when the broker refused a binding or is unreachable; nothing is left subscribed.
    public func subscribe(_ patterns: [TopicPattern], lastEventID: String?, outbox: SSEOutbox) async throws -> Subscription {
        let unique = Array(Set(patterns))
        let id: Int = state.withLock { s in
            s.nextSubscriber += 1
            for p in unique {
                if s.bindings[p.text] == nil { s.bindings[p.text] = Binding(pattern: p) }
                // Holds the binding (no sweep) while it is made; the outbox joins below.
                s.bindings[p.text]?.idleSince = nil
                s.bindings[p.text]?.pending += 1
            }
            return s.nextSubscriber
        }
        do {
            for p in unique {
                try await withCheckedThrowingContinuation { continuation in
                    let id: Int? = bindWaiters.withLock { w in
                        guard !w.stopped else { return nil }
                        w.nextID += 1
                        w.waiting[w.nextID] = continuation
                        return w.nextID
                    }
                    guard let id else {
                        continuation.resume(throwing: CancellationError())
                        return
                    }
                    operationsContinuation.yield(.bind(p, id))
                }
            }
        } catch {
            release(unique)
            throw error
        }
        return state.withLock { s in
            var reset = false
            var replay: [ByteBuffer] = []
            if let lastEventID {
                if let seq = s.historyIndex[lastEventID],
                    unique.allSatisfy({ (s.bindings[$0.text]?.boundSince ?? .max) <= seq + 1 })
                {
                    // Kept, and every pattern was bound all along: replay exactly what followed.
                    for entry in s.history where entry.seq > seq && unique.contains(where: { $0.matches(entry.topic) }) {
                        replay.append(entry.encoded)
                    }
                } else {
                    reset = true
                }
            }
            for p in unique {
                s.bindings[p.text]?.pending -= 1
                s.bindings[p.text]?.subscribers.insert(id)
            }
            s.subscribers[id] = outbox
            return Subscription(id: id, reset: reset, replay: replay)
        }
    }

    private func release(_ patterns: [TopicPattern]) {
        let now = WireContract.epochMilliseconds()
        state.withLock { s in
            for p in patterns {
                s.bindings[p.text]?.pending -= 1
                if s.bindings[p.text].map({ $0.subscribers.isEmpty && $0.pending == 0 }) == true { s.bindings[p.text]?.idleSince = now }
            }
        }
    }

    /// Ends a subscription; its patterns linger, then are unbound if no one else follows them.
    public func unsubscribe(_ id: Int) {
        let now = WireContract.epochMilliseconds()
        state.withLock { s in
            s.subscribers[id] = nil
            for key in Array(s.bindings.keys) where s.bindings[key]!.subscribers.contains(id) {
                s.bindings[key]!.subscribers.remove(id)
                if s.bindings[key]!.subscribers.isEmpty && s.bindings[key]!.pending == 0 { s.bindings[key]!.idleSince = now }
            }
        }
    }

    /// The event queue died with the consumer's connection (it is exclusive): events published
    /// until it is declared and bound again, on the next connection, never reach this edge.
    /// Every subscriber is told at once with an `event: reset` (without an id, so that a client
    /// that resumes names the last event it really got), and a client that resumes from an
    /// event before the loss gets a reset too: from here on, no pattern counts as bound all along.
    public func connectionLost() {
        let targets: [SSEOutbox] = state.withLock { s in
            // Resuming after an event is exact only from the first event after the gap on
            // (seq nextSeq): the condition `boundSince <= seq + 1` in subscribe.
            for key in Array(s.bindings.keys) where s.bindings[key]!.bound {
                s.bindings[key]!.boundSince = s.nextSeq + 1
            }
            return Array(s.subscribers.values)
        }
        SSEOutbox.fanOut(Self.connectionLostEvent, to: targets)
    }

    static let connectionLostEvent = SSEEncoder.event(
        name: "reset",
        data: #"{"reason":"the edge lost its connection to the broker; events published until it is back may be missing"}"#
    )

    /// Records an event from the topic queue and sends it to every matching subscriber.
    /// Called on the consumer thread.
    /// - Parameters:
    ///   - messageID: the publisher's `message_id`; events without a usable one get an id of
    ///     this edge's.
    public func deliver(topic: String, messageID: String?, contentType: String?, body: ByteBuffer) {
        let now = WireContract.epochMilliseconds()
        let data = Self.envelope(topic: topic, contentType: contentType, body: body)
        let (encoded, targets): (ByteBuffer, Targets) = state.withLock { s in
            let seq = s.nextSeq
            s.nextSeq += 1
            var id = messageID ?? ""
            if !Self.isUsableID(id) || s.historyIndex[id] != nil { id = "\(instanceID)-\(seq)" }
            let encoded = SSEEncoder.event(id: id, data: data)
            s.history.append(Entry(seq: seq, id: id, topic: topic, time: now, encoded: encoded))
            s.historyIndex[id] = seq
            s.historyBytes += encoded.readableBytes
            while s.history.count > configuration.historyLimit
                || (s.history.count > 1 && s.historyBytes > configuration.historyByteLimit)
                || (s.history.first.map { now - $0.time > configuration.historyAgeMilliseconds } ?? false)
            {
                s.dropOldestEntry()
            }
            var matched = Set<Int>()
            var single: (key: String, binding: Binding)?
            for (key, binding) in s.bindings where !binding.subscribers.isEmpty && binding.pattern.matches(topic) {
                if single == nil && matched.isEmpty {
                    single = (key, binding)
                } else {
                    if let first = single {
                        matched.formUnion(first.binding.subscribers)
                        single = nil
                    }
                    matched.formUnion(binding.subscribers)
                }
            }
            guard let single else { return (encoded, .outboxes(matched.compactMap { s.subscribers[$0] })) }
            if let plan = single.binding.plan { return (encoded, .plan(plan)) }
            return (encoded, .unplanned(key: single.key, generation: single.binding.generation, single.binding.subscribers.compactMap { s.subscribers[$0] }))
        }
        switch targets {
        case .plan(let plan):
            SSEOutbox.fanOut(encoded, along: plan)
        case .outboxes(let outboxes):
            SSEOutbox.fanOut(encoded, to: outboxes)
        case .unplanned(let key, let generation, let outboxes):
            // Grouping thousands of outboxes by loop takes a lock each: done outside the hub's
            // lock, and once for as long as the binding's subscribers stay the same.
            let plan = SSEOutbox.FanOutPlan(outboxes)
            SSEOutbox.fanOut(encoded, along: plan)
            guard plan.isSettled else { return }
            state.withLock { s in
                if s.bindings[key]?.generation == generation { s.bindings[key]?.plan = plan }
            }
        }
    }

    /// Whom an event goes to: one binding's subscribers (planned already, or to plan and keep),
    /// or the union of several bindings' subscribers.
    enum Targets {
        case plan(SSEOutbox.FanOutPlan)
        case unplanned(key: String, generation: Int, [SSEOutbox])
        case outboxes([SSEOutbox])
    }

    /// `{"topic": …, "data": …}`: a JSON body embedded as JSON, any other as a string.
    static func envelope(topic: String, contentType: String?, body: ByteBuffer) -> String {
        let text = String(buffer: body)
        let embedded: String
        if AggregateClient.isJSON(contentType) || contentType == nil, JSONValidator.isValid(body) {
            embedded = text
        } else {
            embedded = JSONString.quote(text)
        }
        return #"{"topic":\#(JSONString.quote(topic)),"data":\#(embedded)}"#
    }

    /// What the replay history holds: events and bytes of encoded events.
    public var historyUsage: (events: Int, bytes: Int) {
        state.withLock { ($0.history.count, $0.historyBytes) }
    }

    /// A new event id: the publish time in hex milliseconds, then 64 random bits.
    public static func newEventID() -> String {
        String(WireContract.epochMilliseconds(), radix: 16) + "-" + String(RandomID.hex128().prefix(16))
    }

    /// An id that can stand in an SSE `id:` field and a `Last-Event-ID` header.
    static func isUsableID(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= 128 && id.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7f }
    }
}
