#include "http.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <httplib.h>
#include <stdexcept>

namespace dsv4::serve {
namespace {

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    return s;
}

HttpRequest convert(const httplib::Request &req) {
    HttpRequest r;
    r.method = req.method;
    r.path = req.path;
    r.body = req.body;
    for (const auto &[k, v] : req.headers) r.headers[lower(k)] = v;
    return r;
}

// Counts a response in flight for its lifetime.
struct InFlight {
    explicit InFlight(std::atomic<int> &n) : n_(n) { ++n_; }
    ~InFlight() { --n_; }
    InFlight(const InFlight &) = delete;
    InFlight &operator=(const InFlight &) = delete;
    std::atomic<int> &n_;
};

void apply(HttpResponse &&from, httplib::Response &to, std::atomic<int> &in_flight) {
    to.status = from.status;
    for (auto &[k, v] : from.headers) to.set_header(k, v);
    if (!from.stream) {
        to.set_content(from.body, from.content_type);
        return;
    }
    auto stream = std::make_shared<std::function<bool(const ChunkWriter &)>>(std::move(from.stream));
    to.set_chunked_content_provider(from.content_type, [stream, &in_flight](size_t, httplib::DataSink &sink) {
        const InFlight counted(in_flight);
        const bool ok = (*stream)([&](std::string_view chunk) { return sink.write(chunk.data(), chunk.size()); });
        if (ok) sink.done();
        return ok;
    });
}

bool key_matches(const HttpRequest &r, const std::string &key) {
    const std::string auth = r.header("authorization");
    if (auth.size() > 7 && lower(auth.substr(0, 7)) == "bearer " && auth.substr(7) == key) return true;
    return r.header("x-api-key") == key;
}

}  // namespace

struct HttpServer::Impl {
    HttpOptions options;
    httplib::Server server;
    HttpErrorBody error_body;
    int listen_fd = -1;
    std::atomic<int> in_flight{0};
    // A transport-level refusal in the API's envelope; the connection closes (its body may be unread).
    void refuse(const httplib::Request &req, httplib::Response &res, int status, const std::string &message) {
        HttpResponse out;
        out.status = status;
        if (error_body) error_body(convert(req), status, message, out);
        out.headers.emplace_back("Connection", "close");
        apply(std::move(out), res, in_flight);
    }
};

HttpServer::HttpServer(HttpOptions options) : impl_(std::make_unique<Impl>()) {
    impl_->options = std::move(options);
    httplib::Server &s = impl_->server;
    const int threads = std::max(1, impl_->options.threads);
    s.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
    s.set_payload_max_length(impl_->options.max_body);
    s.set_tcp_nodelay(true);  // a stream is many small writes: Nagle's algorithm would hold each for the last ACK
    s.set_socket_options([this](socket_t fd) {
        httplib::default_socket_options(fd);
        impl_->listen_fd = fd;
    });
    s.set_read_timeout(impl_->options.timeout_seconds, 0);
    s.set_write_timeout(impl_->options.timeout_seconds, 0);
    s.set_keep_alive_timeout(std::min(impl_->options.keep_alive_seconds, impl_->options.timeout_seconds));
    // Before the body is read: oversized header sections and declared bodies are refused at once, then the key.
    s.set_pre_routing_handler([this](const httplib::Request &req, httplib::Response &res) {
        const HttpOptions &o = impl_->options;
        size_t header_bytes = 0;
        for (const auto &[k, v] : req.headers) header_bytes += k.size() + v.size() + 4;
        if (header_bytes > o.max_header_bytes) {
            impl_->refuse(req, res, 431, "request header section larger than the server's limit");
            return httplib::Server::HandlerResponse::Handled;
        }
        const std::string length = req.get_header_value("Content-Length");
        const bool digits = !length.empty() && length.size() <= 19 &&
                            std::all_of(length.begin(), length.end(), [](char c) { return c >= '0' && c <= '9'; });
        if (!length.empty() && (!digits || std::stoull(length) > o.max_body)) {
            impl_->refuse(req, res, 413, "request body larger than the server's limit");
            return httplib::Server::HandlerResponse::Handled;
        }
        if (o.api_key.empty() || o.public_paths.count(req.path)) return httplib::Server::HandlerResponse::Unhandled;
        if (key_matches(convert(req), o.api_key)) return httplib::Server::HandlerResponse::Unhandled;
        impl_->refuse(req, res, 401, "invalid or missing API key");
        return httplib::Server::HandlerResponse::Handled;
    });
    // Errors the transport raised itself (no route, body too large, unreadable request) get the API's envelope.
    s.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request &req, httplib::Response &res) {
        if (!res.body.empty() || !impl_->error_body) return httplib::Server::HandlerResponse::Unhandled;
        const std::string message = res.status == 404   ? "no such endpoint: " + req.method + " " + req.path
                                    : res.status == 413 ? "request body larger than the server's limit"
                                                        : "bad request";
        HttpResponse out;
        out.status = res.status;
        impl_->error_body(convert(req), res.status, message, out);
        apply(std::move(out), res, impl_->in_flight);
        return httplib::Server::HandlerResponse::Handled;
    }));
    s.set_exception_handler([this](const httplib::Request &req, httplib::Response &res, std::exception_ptr ep) {
        std::string message = "internal error";
        try {
            if (ep) std::rethrow_exception(ep);
        } catch (const std::exception &e) {
            message += std::string(": ") + e.what();
        } catch (...) {
        }
        HttpResponse out;
        out.status = 500;
        if (impl_->error_body) impl_->error_body(convert(req), 500, message, out);
        apply(std::move(out), res, impl_->in_flight);
    });
}

HttpServer::~HttpServer() { stop(); }

void HttpServer::route(const std::string &method, const std::string &path, HttpHandler handler) {
    auto h = [this, handler = std::move(handler)](const httplib::Request &req, httplib::Response &res) {
        const InFlight counted(impl_->in_flight);
        if (req.body.size() > impl_->options.max_body) {  // a chunked body has no Content-Length to refuse early
            impl_->refuse(req, res, 413, "request body larger than the server's limit");
            return;
        }
        HttpResponse out;
        handler(convert(req), out);
        apply(std::move(out), res, impl_->in_flight);
    };
    if (method == "GET") impl_->server.Get(path, h);
    else if (method == "POST") impl_->server.Post(path, h);
    else throw std::runtime_error("unsupported method " + method);
}

void HttpServer::set_error_body(HttpErrorBody error_body) { impl_->error_body = std::move(error_body); }

int HttpServer::bind() {
    const HttpOptions &o = impl_->options;
    const int port = o.port == 0 ? impl_->server.bind_to_any_port(o.host) : impl_->server.bind_to_port(o.host, o.port)
                                                                              ? o.port
                                                                              : -1;
    if (port <= 0) throw std::runtime_error("cannot listen on " + o.host + ":" + std::to_string(o.port));
    // Debian's build listens with a backlog of 5: a burst of connections beyond it loses SYNs, which the clients
    // resend only after a second. Listening again on the bound socket raises the backlog.
    if (impl_->listen_fd >= 0) ::listen(impl_->listen_fd, SOMAXCONN);
    return port;
}

void HttpServer::serve() { impl_->server.listen_after_bind(); }

int HttpServer::in_flight() const { return impl_->in_flight; }

void HttpServer::stop() {
    if (impl_) impl_->server.stop();
}

}  // namespace dsv4::serve
