// The interop health server on grpc++: the default health check service
// (grpc::EnableDefaultHealthCheckService).
//
// The command line and the stdin commands are the same for every stack; see
// tests/interop/README.md. Built against Debian's libgrpc++-dev by .ci/interop-setup.

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <grpc/grpc.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

namespace {

// How long a graceful stop lets calls finish before cancelling them (Watch streams
// never finish on their own).
constexpr std::chrono::seconds kGrace(1);
// How long calls may go on after a connection reached its maximum age.
constexpr std::chrono::milliseconds kAgeGrace(1000);

struct Arguments {
  int port = -1;
  std::vector<std::string> services;
  std::string cert_path;
  std::string key_path;
  int max_streams = 0;
  // Each connection is closed (GOAWAY) this long after it opened; 0: never.
  int max_connection_age_ms = 0;
};

[[noreturn]] void Fail(const std::string& message) {
  std::cerr << message << std::endl;
  std::exit(2);
}

int Number(const std::string& flag, const char* value) {
  if (value == nullptr) Fail(flag + " needs a number");
  char* end = nullptr;
  long number = std::strtol(value, &end, 10);
  if (*value == '\0' || *end != '\0' || number < 0 || number > 65535) {
    Fail(flag + " needs a number, not " + value);
  }
  return static_cast<int>(number);
}

Arguments ParseArguments(int argc, char** argv) {
  Arguments args;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    const char* next = i + 1 < argc ? argv[i + 1] : nullptr;
    if (flag == "--port") {
      args.port = Number(flag, next);
      ++i;
    } else if (flag == "--services") {
      if (next == nullptr) Fail("--services needs a list");
      std::stringstream list(next);
      for (std::string name; std::getline(list, name, ',');) {
        if (!name.empty()) args.services.push_back(name);
      }
      ++i;
    } else if (flag == "--tls") {
      if (i + 2 >= argc) Fail("--tls needs CERT_PEM KEY_PEM");
      args.cert_path = argv[i + 1];
      args.key_path = argv[i + 2];
      i += 2;
    } else if (flag == "--max-streams") {
      args.max_streams = Number(flag, next);
      ++i;
    } else if (flag == "--max-connection-age-ms") {
      args.max_connection_age_ms = Number(flag, next);
      ++i;
    } else {
      Fail("unknown argument " + flag);
    }
  }
  if (args.port < 0) Fail("--port N is required");
  return args;
}

std::string ReadFile(const std::string& path) {
  std::ifstream file(path);
  if (!file) Fail("cannot read " + path);
  std::stringstream contents;
  contents << file.rdbuf();
  return contents.str();
}

std::shared_ptr<grpc::ServerCredentials> Credentials(const Arguments& args) {
  if (args.cert_path.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options;
  options.pem_key_cert_pairs.push_back(
      {ReadFile(args.key_path), ReadFile(args.cert_path)});
  return grpc::SslServerCredentials(options);
}

}  // namespace

int main(int argc, char** argv) {
  Arguments args = ParseArguments(argc, argv);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  // The default health service is a callback service that the server adds itself,
  // after ServerBuilder has checked that something polls for calls; a server with
  // nothing else registered refuses to start ("At least one of the completion queues
  // must be frequently polled"). A real server has its own services; this one has a
  // generic service that answers every other method UNIMPLEMENTED.
  grpc::CallbackGenericService unimplemented;
  builder.RegisterCallbackGenericService(&unimplemented);
  int port = 0;
  builder.AddListeningPort("127.0.0.1:" + std::to_string(args.port),
                           Credentials(args), &port);
  if (args.max_streams > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, args.max_streams);
  }
  if (args.max_connection_age_ms > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, args.max_connection_age_ms);
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                               static_cast<int>(kAgeGrace.count()));
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    Fail("cannot listen on 127.0.0.1:" + std::to_string(args.port));
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  if (health == nullptr) Fail("the default health check service is not there");
  health->SetServingStatus("", true);
  for (const std::string& service : args.services) {
    health->SetServingStatus(service, true);
  }
  std::cout << "listening " << port << std::endl;

  for (std::string line; std::getline(std::cin, line);) {
    std::stringstream words(line);
    std::string command, service, status, extra;
    words >> command >> service >> status;
    bool nothing_more = !(words >> extra);
    if (command == "set" && nothing_more &&
        (status == "SERVING" || status == "NOT_SERVING")) {
      health->SetServingStatus(service == "-" ? "" : service,
                               status == "SERVING");
    } else if (command == "stop" && service.empty()) {
      health->Shutdown();
      server->Shutdown(std::chrono::system_clock::now() + kGrace);
      server->Wait();
      std::cout << "ok" << std::endl;
      return 0;
    } else {
      Fail("unknown command " + line);
    }
    std::cout << "ok" << std::endl;
  }
  server->Shutdown(std::chrono::system_clock::now());
  return 0;
}
