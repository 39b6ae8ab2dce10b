import GangwayAMQP
import GangwayAMQPCore
import NIOCore
import Synchronization

/// What a job handler reports with: each call publishes one event on `gangway.events`
/// (`job.<id>.<kind>`, persistent, confirmed) with the next `x-seq`.
public final class JobContext: Sendable {
    public let jobID: String
    private let connection: AMQPConnection
    private let appID: String
    private let seq = Mutex(0)

    init(jobID: String, connection: AMQPConnection, appID: String) {
        self.jobID = jobID
        self.connection = connection
        self.appID = appID
    }

    /// Reports progress: `{"percent": …, "message": …}`.
    public func progress(_ percent: Double, _ message: String = "") async throws {
        try await emit("progress", #"{"percent":\#(percent),"message":\#(Self.quote(message))}"#)
    }

    /// Reports a log line: `{"line": …}`.
    public func log(_ line: String) async throws {
        try await emit("log", #"{"line":\#(Self.quote(line))}"#)
    }

    func emit(_ kind: String, _ json: String) async throws {
        let n = seq.withLock { s -> Int in
            s += 1
            return s
        }
        let message = OutboundMessage(
            exchange: WireContract.eventsExchange,
            routingKey: "job.\(jobID).\(kind)",
            properties: AMQPProperties(
                contentType: "application/json",
                headers: [WireContract.Header.seq: .int(Int64(n)), WireContract.Header.jobID: .string(jobID)],
                deliveryMode: 2,
                messageID: "\(jobID).\(n)",
                timestamp: UInt64(WireContract.epochMilliseconds() / 1000),
                appID: appID
            ),
            body: ByteBuffer(string: json)
        )
        _ = try await connection.publish(message)
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where scalar.value < 0x20: out += " "
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
