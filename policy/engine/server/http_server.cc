#include "policy/engine/server/http_server.h"

#include <sys/socket.h>

#include <charconv>
#include <list>
#include <utility>  // before asio: Boost 1.74 headers use std::exchange

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace paddock::policy::engine::server {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

Status ParseListen(const std::string& listen, std::string* host, uint16_t* port) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == listen.size())
    return Error(Code::kInvalidArgument, "--listen: expected HOST:PORT, got '{}'", listen);
  std::string h = listen.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  std::string p = listen.substr(colon + 1);
  unsigned value = 0;
  auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), value);
  if (ec != std::errc() || end != p.data() + p.size() || value > 65535)
    return Error(Code::kInvalidArgument, "--listen: port '{}' is not a number in [0, 65535]", p);
  boost::system::error_code aec;
  asio::ip::make_address(h, aec);
  if (aec) return Error(Code::kInvalidArgument, "--listen: '{}' is not an IP address", h);
  *host = h;
  *port = static_cast<uint16_t>(value);
  return Status::Ok();
}

struct HttpServer::Impl {
  std::shared_ptr<HttpHandler> service;
  HttpServerOptions options;
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::thread accept_thread;
  std::atomic<bool> stopping{false};

  struct Conn {
    tcp::socket socket;
    std::thread thread;
    std::atomic<bool> done{false};
    explicit Conn(tcp::socket s) : socket(std::move(s)) {}
  };
  std::mutex mu;
  std::list<std::unique_ptr<Conn>> conns;

  void Reap() {
    std::list<std::unique_ptr<Conn>> finished;
    {
      std::lock_guard lock(mu);
      for (auto it = conns.begin(); it != conns.end();) {
        if ((*it)->done) {
          finished.push_back(std::move(*it));
          it = conns.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& c : finished) c->thread.join();
  }

  void AcceptLoop() {
    while (!stopping) {
      tcp::socket socket(io);
      boost::system::error_code ec;
      acceptor.accept(socket, ec);
      if (stopping) break;
      if (ec) {
        if (ec == asio::error::bad_descriptor || ec == asio::error::invalid_argument) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));  // EMFILE and the like
        continue;
      }
      Reap();
      socket.set_option(tcp::no_delay(true), ec);
      size_t open;
      {
        std::lock_guard lock(mu);
        open = conns.size();
      }
      if (open >= options.max_connections) {
        RefuseBusy(socket);
        continue;
      }
      auto conn = std::make_unique<Conn>(std::move(socket));
      Conn* c = conn.get();
      {
        std::lock_guard lock(mu);
        conns.push_back(std::move(conn));
      }
      c->thread = std::thread([this, c] {
        Serve(c->socket);
        c->done = true;
      });
    }
  }

  void RefuseBusy(tcp::socket& socket) {
    http::response<http::string_body> res{http::status::service_unavailable, 11};
    res.set(http::field::content_type, "application/json");
    res.set(http::field::connection, "close");
    res.body() = R"({"error":{"message":"too many connections","type":"server_error","param":null,"code":503}})";
    res.prepare_payload();
    boost::system::error_code ec;
    http::write(socket, res, ec);
    socket.shutdown(tcp::socket::shutdown_both, ec);
    socket.close(ec);
    service->CountRejected("connection", 503);
  }

  void Serve(tcp::socket& socket) {
    HttpPeer peer;
    boost::system::error_code peer_ec;
    auto remote = socket.remote_endpoint(peer_ec);
    if (peer_ec) {
      peer = {"unknown", false};
    } else {
      auto addr = remote.address();
      if (addr.is_v6() && addr.to_v6().is_v4_mapped()) addr = asio::ip::make_address_v4(asio::ip::v4_mapped, addr.to_v6());
      peer = {addr.to_string(), addr.is_loopback()};
    }
    beast::flat_buffer buffer;
    for (;;) {
      http::request_parser<http::string_body> parser;
      parser.body_limit(options.max_body_bytes);
      parser.header_limit(64 * 1024);
      boost::system::error_code ec;
      http::read(socket, buffer, parser, ec);
      if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset ||
          stopping)
        break;
      if (ec) {
        bool too_big = ec == http::error::body_limit;
        std::string target = parser.is_header_done() ? std::string(parser.get().target()) : "unknown";
        std::string msg = too_big ? fmt::format("body: larger than the limit of {} bytes", options.max_body_bytes)
                                  : fmt::format("malformed HTTP request: {}", ec.message());
        http::response<http::string_body> res{too_big ? http::status::payload_too_large : http::status::bad_request,
                                              11};
        res.set(http::field::content_type, "application/json");
        res.set(http::field::connection, "close");
        res.body() = nlohmann::json{{"error",
                                     {{"message", msg},
                                      {"type", "invalid_request_error"},
                                      {"param", too_big ? nlohmann::json("body") : nlohmann::json(nullptr)},
                                      {"code", too_big ? 413 : 400}}}}
                         .dump();
        res.prepare_payload();
        http::write(socket, res, ec);
        service->CountRejected(target.substr(0, target.find('?')), too_big ? 413 : 400);
        break;
      }
      http::request<http::string_body> req = parser.release();
      HttpReply reply = service->HandleFrom(peer, std::string(req.method_string()), std::string(req.target()), req.body());
      http::response<http::string_body> res{static_cast<http::status>(reply.status), req.version()};
      res.set(http::field::server, options.server_name);
      res.set(http::field::content_type, reply.content_type);
      res.keep_alive(req.keep_alive() && !stopping);
      if (req.method() != http::verb::head) res.body() = std::move(reply.body);
      res.prepare_payload();
      http::write(socket, res, ec);
      if (ec || !res.keep_alive()) break;
    }
    boost::system::error_code ignore;
    socket.shutdown(tcp::socket::shutdown_both, ignore);
  }
};

Result<std::unique_ptr<HttpServer>> HttpServer::Start(std::shared_ptr<HttpHandler> service,
                                                      HttpServerOptions options) {
  boost::system::error_code ec;
  auto address = asio::ip::make_address(options.host, ec);
  if (ec) return Error(Code::kInvalidArgument, "listen address '{}' is not an IP address", options.host);
  std::unique_ptr<HttpServer> server(new HttpServer());
  server->impl_ = std::make_unique<Impl>();
  Impl& impl = *server->impl_;
  impl.service = std::move(service);
  impl.options = options;
  tcp::endpoint ep(address, options.port);
  impl.acceptor.open(ep.protocol(), ec);
  if (!ec) impl.acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) impl.acceptor.bind(ep, ec);
  if (!ec) impl.acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    return Error(Code::kUnavailable, "cannot listen on {}:{}: {}", options.host, options.port, ec.message());
  server->port_ = impl.acceptor.local_endpoint().port();
  impl.accept_thread = std::thread([&impl] { impl.AcceptLoop(); });
  return server;
}

void HttpServer::Stop() {
  if (!impl_ || impl_->stopping.exchange(true)) return;
  // shutdown() wakes a thread blocked in accept()/read() on these sockets.
  ::shutdown(impl_->acceptor.native_handle(), SHUT_RDWR);
  if (impl_->accept_thread.joinable()) impl_->accept_thread.join();
  {
    std::lock_guard lock(impl_->mu);
    for (auto& c : impl_->conns) ::shutdown(c->socket.native_handle(), SHUT_RD);
  }
  std::list<std::unique_ptr<Impl::Conn>> all;
  {
    std::lock_guard lock(impl_->mu);
    all.swap(impl_->conns);
  }
  for (auto& c : all)
    if (c->thread.joinable()) c->thread.join();
  boost::system::error_code ec;
  impl_->acceptor.close(ec);
}

HttpServer::~HttpServer() { Stop(); }

}  // namespace paddock::policy::engine::server
