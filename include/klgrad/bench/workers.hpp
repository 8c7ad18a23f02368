// A fixed team of threads that runs one job split into slices, for measurements that share a
// call between threads: started once, so that a timed call pays neither a thread's creation
// nor a heap allocation.
#pragma once

#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace klgrad::bench::detail {

/// size() threads, the caller's among them: run(f) calls f(0) on the caller's thread and
/// f(1) ... f(size() - 1) on the team's, and returns when every slice is done, rethrowing
/// the first exception a slice threw.
class workers {
 public:
  explicit workers(int size) {
    for (int i = 1; i < size; ++i) team_.emplace_back([this, i] { serve(i); });
  }
  workers(const workers&) = delete;
  workers& operator=(const workers&) = delete;
  ~workers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    start_.notify_all();
    for (std::thread& t : team_) t.join();
  }

  int size() const { return int(team_.size()) + 1; }

  template <class F>
  void run(F& f) {
    if (team_.empty()) return f(0);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = const_cast<void*>(static_cast<const void*>(&f));
      call_ = [](void* job, int slice) { (*static_cast<F*>(job))(slice); };
      pending_ = int(team_.size());
      failure_ = nullptr;
      ++generation_;
    }
    start_.notify_all();
    std::exception_ptr own;
    try {
      f(0);
    } catch (...) {
      own = std::current_exception();
    }
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    if (own) std::rethrow_exception(own);
    if (failure_) std::rethrow_exception(failure_);
  }

 private:
  void serve(int slice) {
    long seen = 0;
    for (;;) {
      std::unique_lock<std::mutex> lock(mutex_);
      start_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      void (*call)(void*, int) = call_;
      void* job = job_;
      lock.unlock();
      std::exception_ptr failure;
      try {
        call(job, slice);
      } catch (...) {
        failure = std::current_exception();
      }
      lock.lock();
      if (failure && !failure_) failure_ = failure;
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::vector<std::thread> team_;
  std::mutex mutex_;
  std::condition_variable start_, done_;
  long generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
  void (*call_)(void*, int) = nullptr;
  void* job_ = nullptr;
  std::exception_ptr failure_;
};

}  // namespace klgrad::bench::detail
