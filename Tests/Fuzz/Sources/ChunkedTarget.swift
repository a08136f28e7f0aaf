import HTTP

/// The chunked decoder, through the one door it has (`MessageReader`'s
/// `readBody` after a `Transfer-Encoding: chunked` head): the input is the
/// body and whatever follows it.
///
/// Decoding must not depend on how the bytes arrive (whole, or in pieces
/// and chains of any size), and must stop exactly after the last chunk's
/// trailer section, leaving what follows. Then the input is taken as a
/// payload instead: written as chunks the way the proxy writes them
/// (`EventBuffer.moveAsChunk`, `appendLastChunk`), it must decode to itself.
enum ChunkedTarget {
    static let head = Array("POST /upload HTTP/1.1\r\nHost: fuzz.example\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)

    static func run(_ data: UnsafeBufferPointer<UInt8>) {
        let whole = decode(data, [Piece(range: 0..<data.count, ownChain: false)])
        let split = decode(data, arrival(of: data))
        require(whole == split, "decoded differently in pieces:\n\(whole)\n\(split)")
        if case .done(let body, let left) = whole {
            require(body.count + left <= data.count, "more out than in")
            require(left <= data.count, "left \(left)")
        }
        roundTrip(data)
    }

    enum Outcome: Equatable {
        /// The last chunk and the trailer section were read; `left` bytes follow.
        case done([UInt8], left: Int)
        case refused([UInt8])
        case waiting([UInt8])
    }

    static func reader() -> MessageReader {
        let r = MessageReader(kind: .request, capacity: 1024)
        let input = withBytes(head) { EventBuffer($0) }
        guard (try? r.readHead(from: input)) == .complete, r.framing == .chunked else {
            fatalError("the chunked head is not read")
        }
        return r
    }

    static func decode(_ data: UnsafeBufferPointer<UInt8>, _ pieces: [Piece]) -> Outcome {
        let r = reader()
        let input = EventBuffer(), out = EventBuffer(), staging = EventBuffer()
        var body: [UInt8] = []
        for piece in pieces {
            input.append(data, piece, staging: staging)
            let done: Bool
            do {
                done = try r.readBody(from: input, into: out)
            } catch {
                require(error == .badChunk, "\(error) for a chunked body")
                body += out.takeBytes()
                return .refused(body)
            }
            body += out.takeBytes()
            require(r.bodyBytesRead == Int64(body.count), "bodyBytesRead \(r.bodyBytesRead), read \(body.count)")
            if done {
                // Further pieces are the next request's: nothing reads them here.
                let left = data.count - piece.range.upperBound + input.count
                return .done(body, left: left)
            }
        }
        return .waiting(body)
    }

    static func roundTrip(_ data: UnsafeBufferPointer<UInt8>) {
        var g = Generator(seed: data)
        let encoded = EventBuffer()
        var at = 0
        while at < data.count {
            let n = min(data.count - at, g.next(upTo: 300) + 1)
            let chunk = EventBuffer(UnsafeBufferPointer(rebasing: data[at..<(at + n)]))
            encoded.moveAsChunk(from: chunk)
            at += n
        }
        encoded.appendLastChunk()
        encoded.append("GET")
        let r = reader()
        let out = EventBuffer()
        let done: Bool
        do {
            done = try r.readBody(from: encoded, into: out)
        } catch {
            fatalError("our own chunked encoding is refused: \(error)")
        }
        require(done, "our own chunked encoding does not end")
        require(out.takeBytes() == Array(data), "our own chunked encoding decodes to something else")
        require(encoded.takeBytes() == Array("GET".utf8), "the decoder did not stop at the body's end")
    }
}
