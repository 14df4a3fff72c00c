// The server's transport: a thin interface over cpp-httplib (Debian's libcpp-httplib), so the APIs above it see
// only requests, responses and a chunk writer for streams.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dsv4::serve {

struct HttpRequest {
    std::string method, path, body;
    std::map<std::string, std::string> headers;  // names lower-cased
    std::string header(const std::string &lower_name) const {
        auto it = headers.find(lower_name);
        return it == headers.end() ? std::string() : it->second;
    }
};

// Writes one chunk of a streamed body; false once the client has gone.
using ChunkWriter = std::function<bool(std::string_view)>;

struct HttpResponse {
    int status = 200;
    std::string content_type = "application/json";
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers;
    // Set for a streamed body (chunked): called once on the connection's thread after the headers are sent;
    // returns false if the client went away.
    std::function<bool(const ChunkWriter &)> stream;
};

using HttpHandler = std::function<void(const HttpRequest &, HttpResponse &)>;
// Fills the body of a transport-level error (401, 404, 413, 400 unparsable request) in the envelope of the API
// the path belongs to.
using HttpErrorBody = std::function<void(const HttpRequest &, int status, const std::string &message, HttpResponse &)>;

struct HttpOptions {
    std::string host = "127.0.0.1";
    int port = 8080;                 // 0: any free port
    int threads = 8;                 // connections served at once
    size_t max_body = 8u << 20;      // larger bodies: 413
    int timeout_seconds = 30;        // read and write timeouts
    int keep_alive_seconds = 5;      // an idle keep-alive connection is closed after this or timeout_seconds if
                                     // shorter (it holds a thread)
    size_t max_header_bytes = 64u << 10;  // a larger header section: 431
    std::string api_key;             // non-empty: every path but the public ones needs it
    std::set<std::string> public_paths = {"/health"};
};

class HttpServer {
public:
    explicit HttpServer(HttpOptions options);
    ~HttpServer();
    void route(const std::string &method, const std::string &path, HttpHandler handler);
    void set_error_body(HttpErrorBody error_body);
    // Binds the socket; returns the port (the chosen one for port 0). Throws std::runtime_error on failure.
    int bind();
    // Serves until stop(); call after bind().
    void serve();
    void stop();
    // Responses being produced now (handlers running and streams being written).
    int in_flight() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace dsv4::serve
