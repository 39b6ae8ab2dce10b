import CRabbitMQ

/// SHA-256 through the OpenSSL that rabbitmq-c links for TLS.
public enum Digest {
    /// The SHA-256 of `text`'s UTF-8 bytes, as 64 lowercase hex digits.
    public static func sha256Hex(_ text: String) -> String {
        var out = [UInt8](repeating: 0, count: 32)
        var bytes = Array(text.utf8)
        let ok = bytes.withUnsafeMutableBytes { input in
            out.withUnsafeMutableBufferPointer { gw_sha256(input.baseAddress, input.count, $0.baseAddress) }
        }
        precondition(ok == 1, "SHA-256 failed")
        let digits = Array("0123456789abcdef".utf8)
        var hex = [UInt8]()
        hex.reserveCapacity(64)
        for b in out {
            hex.append(digits[Int(b >> 4)])
            hex.append(digits[Int(b & 0xf)])
        }
        return String(decoding: hex, as: UTF8.self)
    }
}
