/// A parsed `amqp://` or `amqps://` URL, as RabbitMQ's URI spec describes it.
///
/// `amqp://user:pass@host:port/vhost?heartbeat=10&connection_timeout=5000` and, for TLS,
/// `cacertfile`, `certfile`, `keyfile`, `verify=verify_none|verify_peer`,
/// `server_name_indication`. The vhost is the percent-decoded path; an empty path is `/`.
public struct AMQPURL: Sendable, Hashable, CustomStringConvertible {
    public var tls: Bool
    public var host: String
    public var port: Int
    public var user: String
    public var password: String
    public var vhost: String
    /// Heartbeat interval in seconds requested of the broker; 0 disables heartbeats.
    public var heartbeatSeconds: Int
    public var connectionTimeoutMilliseconds: Int
    public var caCertFile: String?
    public var certFile: String?
    public var keyFile: String?
    public var verifyPeer: Bool
    public var verifyHostname: Bool

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public var description: String
    }

    /// The URL with the password hidden, for logs.
    public var description: String {
        "\(tls ? "amqps" : "amqp")://\(user)@\(host):\(port)/\(vhost == "/" ? "" : vhost)"
    }

    public init(_ text: String) throws(ParseError) {
        let scheme: Substring
        var rest: Substring
        if let colon = text.firstIndex(of: ":"), text[colon...].hasPrefix("://") {
            scheme = text[..<colon]
            rest = text[text.index(colon, offsetBy: 3)...]
        } else {
            throw ParseError(description: "'\(text)' is not an AMQP URL: expected amqp://host or amqps://host")
        }
        switch scheme.lowercased() {
        case "amqp": tls = false
        case "amqps": tls = true
        default: throw ParseError(description: "unsupported scheme '\(scheme)': use amqp:// or amqps://")
        }
        var query: Substring = ""
        if let q = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: q)...]
            rest = rest[..<q]
        }
        var path: Substring? = nil
        if let slash = rest.firstIndex(of: "/") {
            path = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
        }
        user = "guest"
        password = "guest"
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = credentials.firstIndex(of: ":") {
                user = try Self.decode(credentials[..<colon])
                password = try Self.decode(credentials[credentials.index(after: colon)...])
            } else {
                user = try Self.decode(credentials)
            }
        }
        port = tls ? 5671 : 5672
        var hostPart = rest
        if hostPart.hasPrefix("[") {
            guard let close = hostPart.firstIndex(of: "]") else { throw ParseError(description: "unterminated IPv6 address in '\(text)'") }
            host = String(hostPart[hostPart.index(after: hostPart.startIndex)..<close])
            hostPart = hostPart[hostPart.index(after: close)...]
            if hostPart.hasPrefix(":") {
                port = try Self.port(hostPart.dropFirst(), in: text)
            }
        } else if let colon = hostPart.lastIndex(of: ":") {
            host = String(hostPart[..<colon])
            port = try Self.port(hostPart[hostPart.index(after: colon)...], in: text)
        } else {
            host = String(hostPart)
        }
        if host.isEmpty { host = "localhost" }
        vhost = "/"
        if let path, !path.isEmpty { vhost = try Self.decode(path) }
        heartbeatSeconds = 10
        connectionTimeoutMilliseconds = 5_000
        verifyPeer = true
        verifyHostname = true
        for pair in query.split(separator: "&") where !pair.isEmpty {
            let kv = pair.split(separator: "=", maxSplits: 1)
            let key = String(kv[0])
            let value = kv.count > 1 ? try Self.decode(kv[1]) : ""
            switch key {
            case "heartbeat":
                guard let v = Int(value), v >= 0, v <= 65535 else { throw ParseError(description: "heartbeat must be 0...65535 seconds, got '\(value)'") }
                heartbeatSeconds = v
            case "connection_timeout":
                guard let v = Int(value), v > 0 else { throw ParseError(description: "connection_timeout must be a positive number of milliseconds, got '\(value)'") }
                connectionTimeoutMilliseconds = v
            case "cacertfile": caCertFile = value
            case "certfile": certFile = value
            case "keyfile": keyFile = value
            case "verify":
                switch value {
                case "verify_peer": verifyPeer = true
                case "verify_none": verifyPeer = false; verifyHostname = false
                default: throw ParseError(description: "verify must be verify_peer or verify_none, got '\(value)'")
                }
            case "server_name_indication":
                if value == "disable" { verifyHostname = false }
            default:
                // RabbitMQ's URI spec allows other client-specific keys; ignoring them is what
                // the other clients do.
                continue
            }
            if !tls, Self.tlsKeys.contains(key) {
                // Ignoring it would connect in plain text to a broker the user meant to reach
                // over TLS.
                throw ParseError(description: "'\(key)' is a TLS option, but '\(scheme)://' connects without TLS: use amqps://")
            }
        }
        switch (certFile, keyFile) {
        case (.some, nil): throw ParseError(description: "certfile needs keyfile too: the client certificate's private key")
        case (nil, .some): throw ParseError(description: "keyfile needs certfile too: the client certificate")
        default: break
        }
    }

    /// The query keys that configure TLS.
    static let tlsKeys: Set<String> = ["cacertfile", "certfile", "keyfile", "verify", "server_name_indication"]

    /// The files the URL names (CA, client certificate and key), for a check at start that
    /// they can be read: a connection would otherwise retry forever on a missing file.
    public var files: [(option: String, path: String)] {
        [("cacertfile", caCertFile), ("certfile", certFile), ("keyfile", keyFile)].compactMap { option, path in
            path.map { (option, $0) }
        }
    }

    private static func port(_ text: Substring, in url: String) throws(ParseError) -> Int {
        guard let p = Int(text), (1...65535).contains(p) else { throw ParseError(description: "invalid port '\(text)' in '\(url)'") }
        return p
    }

    private static func decode(_ text: Substring) throws(ParseError) -> String {
        var bytes: [UInt8] = []
        var i = text.utf8.startIndex
        let utf8 = text.utf8
        while i < utf8.endIndex {
            let c = utf8[i]
            if c == UInt8(ascii: "%") {
                let h = utf8.index(after: i)
                guard h < utf8.endIndex, utf8.index(after: h) < utf8.endIndex,
                    let hi = hexValue(utf8[h]), let lo = hexValue(utf8[utf8.index(after: h)])
                else { throw ParseError(description: "bad percent-encoding in '\(text)'") }
                bytes.append(hi << 4 | lo)
                i = utf8.index(h, offsetBy: 2)
            } else {
                bytes.append(c)
                i = utf8.index(after: i)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
