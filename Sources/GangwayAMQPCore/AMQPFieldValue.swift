/// A value in an AMQP 0-9-1 field table (message headers, declaration arguments).
///
/// Only the types RabbitMQ itself produces are modelled; decoding maps the rarer
/// integer widths onto ``int``.
public enum AMQPFieldValue: Sendable, Hashable {
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case bytes([UInt8])
    case timestamp(UInt64)
    case table(AMQPTable)
    case array([AMQPFieldValue])
    case void

    /// The value as text, when it is text or a number; `nil` otherwise.
    ///
    /// Workers in other languages send numbers as strings and strings as numbers; the wire
    /// contract accepts both for `x-status`, `x-part` and friends.
    public var stringValue: String? {
        switch self {
        case .string(let s): return s
        case .int(let i): return String(i)
        case .double(let d): return String(d)
        case .bool(let b): return b ? "true" : "false"
        case .bytes(let b): return String(decoding: b, as: UTF8.self)
        case .timestamp(let t): return String(t)
        case .table, .array, .void: return nil
        }
    }

    /// The value as an integer when it is one, or text that parses as one.
    public var intValue: Int64? {
        switch self {
        case .int(let i): return i
        case .timestamp(let t): return Int64(exactly: t)
        case .double(let d): return Int64(exactly: d)
        case .string, .bytes: return stringValue.flatMap { Int64($0.trimmingWhitespace()) }
        case .bool, .table, .array, .void: return nil
        }
    }

    /// The value as a boolean when it is one, or the text `true` / `false`, or 0 / 1.
    public var boolValue: Bool? {
        switch self {
        case .bool(let b): return b
        case .int(let i): return i == 0 ? false : (i == 1 ? true : nil)
        case .string, .bytes:
            switch stringValue?.trimmingWhitespace().lowercased() {
            case "true", "1": return true
            case "false", "0": return false
            default: return nil
            }
        default: return nil
        }
    }
}

/// An AMQP field table: ordered keys are not significant on the wire.
public typealias AMQPTable = [String: AMQPFieldValue]

extension AMQPFieldValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .int(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
}

extension String {
    func trimmingWhitespace() -> Substring {
        var s = self[...]
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return s
    }
}
