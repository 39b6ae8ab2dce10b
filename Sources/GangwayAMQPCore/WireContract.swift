import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Names of wire contract version 1 between the edge and workers. The README documents them.
public enum WireContract {
    public static let version = 1
    public static let appID = "gangway"
    public static let defaultRPCExchange = "gangway.rpc"
    public static let eventsExchange = "gangway.events"
    /// Topic exchange of job events: routing key `job.<id>.<kind>`, header `x-seq`.
    public static let eventsExchangeSpec = ExchangeSpec(name: "gangway.events", type: "topic")
    /// Where job queues dead-letter a job that failed too many deliveries (`x-delivery-limit`
    /// on a quorum queue); an edge reports each as `job.<id>.failed`.
    public static let deadJobsExchange = ExchangeSpec(name: "gangway.jobs.dlx", type: "fanout")
    public static let deadJobsQueue = QueueSpec(name: "gangway.jobs.dead", durable: true, arguments: ["x-queue-type": "quorum"])

    /// The stream queue that keeps job events (an hour, at most 100 MB per segment file), so
    /// that an edge that starts replays the history it missed.
    public static let eventLogQueue = QueueSpec(
        name: "gangway.events.log",
        durable: true,
        arguments: ["x-queue-type": "stream", "x-max-age": "1h", "x-stream-max-segment-size-bytes": .int(100_000_000)]
    )
    /// Topic exchange of published events (`POST /v1/topics/<topic>`, routing key = topic),
    /// apart from job events so that a subscriber's `#` never sees them.
    public static let topicsExchange = ExchangeSpec(name: "gangway.topics", type: "topic")
    /// Fanout exchange of cancel messages (`x-cancel: <correlation id>`); every worker binds a
    /// queue of its own to it, or reads the cancel log.
    public static let cancelExchange = ExchangeSpec(name: "gangway.cancel", type: "fanout")
    /// The stream queue that keeps cancel messages (an hour, at most 10 MB per segment file),
    /// so that a worker that was not running or not connected when a job was cancelled learns
    /// of it when it (re)connects, before it takes that job.
    public static let cancelLogQueue = QueueSpec(
        name: "gangway.cancel.log",
        durable: true,
        arguments: ["x-queue-type": "stream", "x-max-age": "1h", "x-stream-max-segment-size-bytes": .int(10_000_000)]
    )
    public static let cancelLogBinding = BindingSpec(source: cancelExchange.name, destination: cancelLogQueue.name, routingKey: "")
    /// How long a cancel message counts: a worker ignores an older one (the log keeps whole
    /// segment files, so it may hold some).
    public static let cancelMilliseconds: Int64 = 3_600_000

    public enum Header {
        public static let method = "x-method"
        public static let path = "x-path"
        public static let query = "x-query"
        public static let route = "x-route"
        public static let requestID = "x-request-id"
        public static let traceparent = "traceparent"
        public static let deadline = "x-deadline"
        public static let principal = "x-principal"
        /// Prefix of forwarded request headers and of reply headers that become response headers.
        public static let headerPrefix = headerPrefixBytes.description
        /// ``headerPrefix`` as static bytes, for code that reads keys byte by byte.
        public static let headerPrefixBytes: StaticString = "x-header-"
        public static let status = "x-status"
        public static let part = "x-part"
        public static let final = "x-final"
        public static let contractVersion = "x-gangway-version"
        public static let cancel = "x-cancel"
        /// On a marker: a message a consumer of a stream queue publishes into it to tell when
        /// its replay of the log has reached the present (see ``LogReplay``).
        public static let logMarker = "x-log-marker"
        public static let replier = "x-replier"
        public static let jobID = "x-job-id"
        public static let seq = "x-seq"
        public static let idempotencyKey = "x-idempotency-key"
        public static let resultRedirect = "x-result-redirect"
        public static let error = "x-error"
    }

    /// The headers of a job message that its events carry too: its `x-idempotency-key`, from
    /// which every edge learns which job a key made even if the edge that submitted it could
    /// not announce it.
    public static func echoedJobHeaders(_ job: AMQPTable) -> AMQPTable {
        guard let key = job[Header.idempotencyKey] else { return [:] }
        return [Header.idempotencyKey: key]
    }

    /// What an edge keeps, and its followers get, in place of a job event whose body is larger
    /// than the edge keeps (`--max-event-bytes`): the event keeps its `x-seq` and kind, so the
    /// job's events stay numbered without a gap, and the body says what was left out.
    public static func omittedEventBody(size: UInt64, limit: Int) -> ByteBuffer {
        ByteBuffer(string: #"{"omitted":"the event's body is larger than the edge keeps","bytes":\#(size),"limit":\#(limit)}"#)
    }

    /// A job event: `job.<id>.<kind>` on `gangway.events`, persistent, JSON, with `x-seq`.
    public static func jobEvent(jobID: String, kind: String, seq: Int, json: String, appID: String, extraHeaders: AMQPTable = [:]) -> OutboundMessage {
        var headers = extraHeaders
        headers[Header.seq] = .int(Int64(seq))
        headers[Header.jobID] = .string(jobID)
        return OutboundMessage(
            exchange: eventsExchange,
            routingKey: "job.\(jobID).\(kind)",
            // An event that reaches no queue must come back (basic.return) to be sent again,
            // not be confirmed and lost: as the broker's application restarts, there is a
            // moment when it takes connections and routes nothing to the event log yet.
            mandatory: true,
            properties: AMQPProperties(
                contentType: "application/json",
                headers: headers,
                deliveryMode: 2,
                messageID: "\(jobID).\(seq)",
                timestamp: UInt64(epochMilliseconds() / 1000),
                appID: appID
            ),
            body: ByteBuffer(string: json)
        )
    }

    /// A cancel message for the request or job `id`: persistent and `mandatory` (the cancel log
    /// takes it, so a return means it reached nothing), stamped with its time.
    public static func cancel(id: String) -> OutboundMessage {
        OutboundMessage(
            exchange: cancelExchange.name,
            routingKey: "",
            mandatory: true,
            properties: AMQPProperties(
                headers: [Header.cancel: .string(id)],
                deliveryMode: 2,
                correlationID: id,
                timestamp: UInt64(epochMilliseconds() / 1000),
                appID: appID
            )
        )
    }

    /// A marker for the cancel log: a job worker publishes one each time it connects, and once
    /// its consumer of the log reads it back, it has read every cancel sent before. It carries
    /// no `x-cancel` and no `correlation_id`, so a worker that does not look for it ignores it.
    public static func cancelLogMarker(_ marker: String) -> OutboundMessage {
        OutboundMessage(
            exchange: cancelExchange.name,
            routingKey: "",
            mandatory: true,
            properties: AMQPProperties(headers: [Header.logMarker: .string(marker)], appID: appID)
        )
    }

    /// A marker for the job event log: an edge publishes one each time its consumer of the log
    /// connects, and once it reads it back, it has caught up with every job's history. Its
    /// routing key, `job.marker`, names no job event (those have three parts).
    public static let eventLogMarkerKey = "job.marker"
    public static func eventLogMarker(_ marker: String) -> OutboundMessage {
        OutboundMessage(
            exchange: eventsExchange,
            routingKey: eventLogMarkerKey,
            mandatory: true,
            properties: AMQPProperties(headers: [Header.logMarker: .string(marker)], appID: appID)
        )
    }

    /// The id a cancel message is for and when it was sent (epoch ms; `nil` when it does not
    /// say), or `nil` when it names no id.
    public static func cancelled(_ properties: AMQPProperties) -> (id: String, at: Int64?)? {
        guard let id = properties.headers[Header.cancel]?.stringValue ?? properties.correlationID else { return nil }
        return (id, properties.timestamp.map { Int64($0) * 1000 })
    }

    /// Whether a header value or media type is one line: no CR, LF or NUL. Checked on UTF-8
    /// bytes, not characters ("\r\n" is one `Character`, equal to neither "\r" nor "\n"); no
    /// byte of a multi-byte character is below 0x80, so these bytes are these characters.
    public static func isSingleLine(_ text: String) -> Bool {
        func isBreak(_ byte: UInt8) -> Bool { byte == UInt8(ascii: "\r") || byte == UInt8(ascii: "\n") || byte == 0 }
        // A native string's bytes are contiguous: read them through a pointer, not the view.
        return text.utf8.withContiguousStorageIfAvailable { !$0.contains(where: isBreak) } ?? !text.utf8.contains(where: isBreak)
    }

    /// Wall-clock milliseconds since the epoch: the unit of `x-deadline`.
    public static func epochMilliseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }
}
