#ifdef LCTX_HAVE_CUDA
#include "dist/nccl_comm.h"

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <list>
#include <mutex>
#include <thread>

#include "core/cuda_check.h"

namespace lctx::dist {

using Clock = std::chrono::steady_clock;

namespace {

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::f64: return ncclFloat64;
    case DType::f32: return ncclFloat32;
    case DType::bf16: return ncclBfloat16;
    case DType::f16: return ncclFloat16;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
  }
  return ncclFloat32;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::max: return ncclMax;
    case ReduceOp::min: return ncclMin;
  }
  return ncclSum;
}

struct Event {
  cudaEvent_t e = nullptr;
  Event() { LCTX_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming)); }
  ~Event() { cudaEventDestroy(e); }
};

cudaEvent_t ev(const std::shared_ptr<void>& p) { return static_cast<Event*>(p.get())->e; }

class NcclRequest final : public RequestImpl {
 public:
  explicit NcclRequest(std::shared_ptr<void> done) : done_(std::move(done)) {}
  void wait(Stream s) override { LCTX_CUDA_CHECK(cudaStreamWaitEvent(cuda_stream(s), ev(done_), 0)); }
  bool test() override { return cudaEventQuery(ev(done_)) == cudaSuccess; }

 private:
  std::shared_ptr<void> done_;
};

}  // namespace

// Polls the in-flight operations of one communicator; aborts the job on an NCCL error or
// an operation past its deadline.
struct NcclComm::Watchdog {
  struct Entry {
    std::shared_ptr<void> done;
    Clock::time_point deadline;
    std::string what;
  };
  NcclComm* owner;
  std::mutex mu;
  std::condition_variable cv;
  std::list<Entry> inflight;
  bool stop = false;
  std::thread thread;

  explicit Watchdog(NcclComm* o) : owner(o), thread([this] { run(); }) {}
  ~Watchdog() {
    {
      std::lock_guard lk(mu);
      stop = true;
    }
    cv.notify_all();
    thread.join();
  }
  void add(std::shared_ptr<void> done, const std::string& what) {
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(owner->opts_.timeout_s));
    std::lock_guard lk(mu);
    inflight.push_back({std::move(done), deadline, what});
  }
  [[noreturn]] void abort_job(const std::string& why) {
    std::fprintf(stderr, "lctx NcclComm [rank %d of %d, cuda:%d]: %s; aborting the job (ncclCommAbort + MPI_Abort)\n",
                 owner->rank_, owner->size_, owner->device_, why.c_str());
    std::fflush(stderr);
    ncclCommAbort(owner->comm_);
    MPI_Abort(MPI_COMM_WORLD, 4);
    std::abort();
  }
  void run() {
    cudaSetDevice(owner->device_);
    std::unique_lock lk(mu);
    while (!stop) {
      cv.wait_for(lk, std::chrono::milliseconds(5));
      ncclResult_t async = ncclSuccess;
      if (ncclCommGetAsyncError(owner->comm_, &async) == ncclSuccess && async != ncclSuccess && async != ncclInProgress)
        abort_job(detail::cat("asynchronous NCCL error: ", ncclGetErrorString(async), " (", ncclGetLastError(owner->comm_),
                              ")"));
      const auto now = Clock::now();
      for (auto it = inflight.begin(); it != inflight.end();) {
        const cudaError_t q = cudaEventQuery(ev(it->done));
        if (q == cudaSuccess) {
          it = inflight.erase(it);
          continue;
        }
        if (q != cudaErrorNotReady)
          abort_job(detail::cat("CUDA error while waiting for ", it->what, ": ", cudaGetErrorString(q)));
        if (now > it->deadline)
          abort_job(detail::cat(it->what, " not complete after ", owner->opts_.timeout_s,
                                " s (a peer did not post the matching operation, or posted a different one)"));
        ++it;
      }
    }
  }
};

NcclComm::NcclComm(MpiComm& boot, int device, CommOptions opts) : Comm(boot.rank(), boot.size(), opts), device_(device) {
  LCTX_CHECK(device >= 0 && device < cuda_device_count(), "NcclComm: GPU ", device, " does not exist (",
             cuda_device_count(), " visible)");
  LCTX_CUDA_CHECK(cudaSetDevice(device_));
  ncclUniqueId id;
  if (rank_ == 0) LCTX_NCCL_CHECK(ncclGetUniqueId(&id));
  LCTX_MPI_CHECK(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, boot.handle()));
  LCTX_NCCL_CHECK(ncclCommInitRank(&comm_, size_, id, rank_));
  init_common();
}

NcclComm::NcclComm(ncclComm_t comm, int device, CommOptions opts) : Comm(0, 1, opts), comm_(comm), device_(device) {
  LCTX_NCCL_CHECK(ncclCommUserRank(comm_, &rank_));
  LCTX_NCCL_CHECK(ncclCommCount(comm_, &size_));
  init_common();
}

void NcclComm::init_common() {
  LCTX_CUDA_CHECK(cudaSetDevice(device_));
  int lo = 0, hi = 0;
  LCTX_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&lo, &hi));
  LCTX_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, hi));  // comm first
  watchdog_ = std::make_unique<Watchdog>(this);
}

NcclComm::~NcclComm() {
  cudaSetDevice(device_);
  if (stream_) cudaStreamSynchronize(stream_);  // in-flight operations are watched until done
  watchdog_.reset();
  if (comm_) ncclCommDestroy(comm_);
  if (stream_) cudaStreamDestroy(stream_);
}

void NcclComm::check_buffer(const char* op, const Buffer& b) const {
  LCTX_CHECK(b.device == Device::cuda(device_), "NcclComm::", op, ": ", b.str(), " must be on cuda:", device_);
}

void NcclComm::begin(Stream s) {
  LCTX_CUDA_CHECK(cudaSetDevice(device_));
  Event ready;
  LCTX_CUDA_CHECK(cudaEventRecord(ready.e, cuda_stream(s)));
  LCTX_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready.e, 0));
}

std::shared_ptr<void> NcclComm::end(const std::string& what) {
  auto done = std::make_shared<Event>();
  LCTX_CUDA_CHECK(cudaEventRecord(done->e, stream_));
  std::shared_ptr<void> p = done;
  watchdog_->add(p, detail::cat(what, " (rank ", rank_, ")"));
  return p;
}

Request NcclComm::isend_impl(const Buffer& b, int dst, Stream s) {
  check_peer("isend", dst);
  check_buffer("isend", b);
  begin(s);
  LCTX_NCCL_CHECK(ncclSend(b.data, b.count, nccl_type(b.dtype), dst, comm_, stream_));
  return Request(std::make_unique<NcclRequest>(end(detail::cat("send of ", b.str(), " to rank ", dst))));
}

Request NcclComm::irecv_impl(const Buffer& b, int src, Stream s) {
  check_peer("irecv", src);
  check_buffer("irecv", b);
  begin(s);
  LCTX_NCCL_CHECK(ncclRecv(b.data, b.count, nccl_type(b.dtype), src, comm_, stream_));
  return Request(std::make_unique<NcclRequest>(end(detail::cat("receive of ", b.str(), " from rank ", src))));
}

Request NcclComm::sendrecv_impl(const Buffer& send, int send_to, const Buffer& recv, int recv_from, Stream s) {
  check_peer("sendrecv", send_to);
  check_peer("sendrecv", recv_from);
  check_buffer("sendrecv", send);
  check_buffer("sendrecv", recv);
  begin(s);
  LCTX_NCCL_CHECK(ncclGroupStart());
  LCTX_NCCL_CHECK(ncclSend(send.data, send.count, nccl_type(send.dtype), send_to, comm_, stream_));
  LCTX_NCCL_CHECK(ncclRecv(recv.data, recv.count, nccl_type(recv.dtype), recv_from, comm_, stream_));
  LCTX_NCCL_CHECK(ncclGroupEnd());
  return Request(std::make_unique<NcclRequest>(end(detail::cat("sendrecv (send ", send.str(), " to rank ", send_to,
                                                              ", receive ", recv.str(), " from rank ", recv_from, ")"))));
}

void NcclComm::all_reduce_impl(const Buffer& b, ReduceOp op, Stream s) {
  check_buffer("all_reduce", b);
  begin(s);
  LCTX_NCCL_CHECK(ncclAllReduce(b.data, b.data, b.count, nccl_type(b.dtype), nccl_op(op), comm_, stream_));
  NcclRequest(end(detail::cat("all_reduce(", reduce_op_name(op), ", ", b.str(), ")"))).wait(s);
}

void NcclComm::all_gather_impl(const Buffer& in, const Buffer& out, Stream s) {
  check_buffer("all_gather", in);
  begin(s);
  LCTX_NCCL_CHECK(ncclAllGather(in.data, out.data, in.count, nccl_type(in.dtype), comm_, stream_));
  NcclRequest(end(detail::cat("all_gather(", in.str(), ")"))).wait(s);
}

void NcclComm::reduce_scatter_impl(const Buffer& in, const Buffer& out, ReduceOp op, Stream s) {
  check_buffer("reduce_scatter", in);
  begin(s);
  LCTX_NCCL_CHECK(ncclReduceScatter(in.data, out.data, out.count, nccl_type(in.dtype), nccl_op(op), comm_, stream_));
  NcclRequest(end(detail::cat("reduce_scatter(", reduce_op_name(op), ", ", out.str(), ")"))).wait(s);
}

void NcclComm::all_to_all_impl(const Buffer& in, const Buffer& out, Stream s) {
  check_buffer("all_to_all", in);
  begin(s);
  const int64_t blk = in.count / size_;
  const size_t es = dtype_size(in.dtype);
  LCTX_NCCL_CHECK(ncclGroupStart());
  for (int r = 0; r < size_; ++r) {
    LCTX_NCCL_CHECK(ncclSend(static_cast<char*>(in.data) + r * blk * es, blk, nccl_type(in.dtype), r, comm_, stream_));
    LCTX_NCCL_CHECK(ncclRecv(static_cast<char*>(out.data) + r * blk * es, blk, nccl_type(in.dtype), r, comm_, stream_));
  }
  LCTX_NCCL_CHECK(ncclGroupEnd());
  NcclRequest(end(detail::cat("all_to_all(", in.str(), ")"))).wait(s);
}

void NcclComm::broadcast_impl(const Buffer& b, int root, Stream s) {
  check_peer("broadcast", root);
  check_buffer("broadcast", b);
  begin(s);
  LCTX_NCCL_CHECK(ncclBroadcast(b.data, b.data, b.count, nccl_type(b.dtype), root, comm_, stream_));
  NcclRequest(end(detail::cat("broadcast(root ", root, ", ", b.str(), ")"))).wait(s);
}

void NcclComm::barrier() {
  Tensor one = Tensor::zeros({1}, DType::f32, Device::cuda(device_), {stream_});
  LCTX_CUDA_CHECK(cudaSetDevice(device_));
  LCTX_NCCL_CHECK(ncclAllReduce(one.raw(), one.raw(), 1, ncclFloat32, ncclSum, comm_, stream_));
  auto done = end("barrier()");
  LCTX_CUDA_CHECK(cudaEventSynchronize(ev(done)));  // bounded: the watchdog aborts a hang
}

std::unique_ptr<Comm> NcclComm::split(int color, int key) {
  LCTX_CUDA_CHECK(cudaSetDevice(device_));
  LCTX_CUDA_CHECK(cudaStreamSynchronize(stream_));
  ncclComm_t sub = nullptr;
  LCTX_NCCL_CHECK(ncclCommSplit(comm_, color, key, &sub, nullptr));
  return std::unique_ptr<Comm>(new NcclComm(sub, device_, opts_));
}

}  // namespace lctx::dist
#endif  // LCTX_HAVE_CUDA
